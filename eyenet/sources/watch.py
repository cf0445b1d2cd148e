"""Noticing that the device list changed: the config file re-read when it changes on disk
or when the process gets SIGHUP, without restarting anything.

Only ``devices`` takes effect live; a change to any other setting is reported as needing a
restart. A file that no longer loads (bad YAML, a bad device entry) is reported with the
config error and the running device list stays as it was: nothing already polled stops.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from eyenet.config import EyeNetConfig, load_config
from eyenet.errors import ConfigError
from eyenet.sources.specs import DeviceSpec

log = logging.getLogger(__name__)


class DeviceListWatch:
    def __init__(self, config: EyeNetConfig, path: str | os.PathLike[str] | None = None,
                 load: Callable[[str], EyeNetConfig] = load_config) -> None:
        self.path = Path(path) if path is not None else (
            Path(config.loaded_from) if config.loaded_from else None)
        self._load = load
        self._devices = list(config.devices)
        self._others = self._without_devices(config)
        self._requested = False
        self._digest = self._file_digest()
        self.last_error: str | None = None

    @staticmethod
    def _without_devices(config: EyeNetConfig) -> dict:
        data = config.to_dict()
        data.pop("devices", None)
        return data

    def _file_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path else None
        except OSError:
            return None

    def request(self, *_: object) -> None:
        """Re-read at the next check (the SIGHUP handler: signal number and frame ignored)."""
        self._requested = True

    def check(self) -> list[DeviceSpec] | None:
        """The new device list when the file changed (or a reload was requested) and it
        differs from the running one; None otherwise."""
        if self.path is None:
            return None
        digest = self._file_digest()
        if not self._requested and digest == self._digest:
            return None
        self._requested, self._digest = False, digest
        try:
            fresh = self._load(str(self.path))
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("device list not reloaded, %s does not load: %s (still polling the %d devices "
                      "listed before)", self.path, exc, len(self._devices))
            return None
        self.last_error = None
        if self._without_devices(fresh) != self._others:
            log.warning("%s changed settings other than devices; those take effect at the next "
                        "restart, the device list now", self.path)
        if list(fresh.devices) == self._devices:
            return None
        self._devices = list(fresh.devices)
        return list(fresh.devices)
