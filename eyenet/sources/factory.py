"""Sources by kind name, as the CLI and the config name them."""

from __future__ import annotations

import inspect
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError
from eyenet.sources.base import SOURCE_KINDS, Source
from eyenet.sources.devices import DeviceSource
from eyenet.sources.replay import ReplaySource
from eyenet.sources.simulator import SimulatedSource


def build_source(kind: str, config: EyeNetConfig, **options: Any) -> Source:
    """Build a source by kind name; ``options`` are the source class's keyword arguments.

    Unknown kinds and unknown options are :class:`SourceError` naming them and the choices,
    so a typo in a CLI flag or a config file fails loudly instead of being ignored.
    """
    cls: type[Source]
    if kind == "simulated":
        cls = SimulatedSource
    elif kind == "replay":
        cls = ReplaySource
    elif kind == "devices":
        cls = DeviceSource
    else:
        raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}",
                          source=str(kind))
    accepted = [p for p in inspect.signature(cls).parameters if p != "config"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SourceError(f"{kind} source has no option(s) {unknown}; options are {accepted}",
                          source=kind)
    return cls(config, **options)
