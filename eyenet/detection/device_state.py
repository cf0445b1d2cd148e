"""Per-device state the live scorers keep in the store (learned scales, regimes).

Each entry is tied to the feature names it was computed for: a model with other features
ignores it rather than misreading it, and a restarted feature pool or a Serve replica of
the same model reads it back. ``kind`` is the state's class's ``STATE_KIND``.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from eyenet.store import ComponentStateStore


class DeviceState(Protocol):
    STATE_KIND: str

    def to_dict(self) -> dict[str, Any]: ...


S = TypeVar("S")


def save_device_state(store: ComponentStateStore, device_id: str, feature_names: list[str],
                      state: DeviceState) -> None:
    store.put_state(f"{state.STATE_KIND}/{device_id}", {"features": list(feature_names), **state.to_dict()})


def load_device_state(store: ComponentStateStore, cls: type[S], device_id: str,
                      feature_names: list[str]) -> S | None:
    """The ``cls`` state saved for ``device_id``, if it was saved for these features."""
    saved = store.get_state(f"{cls.STATE_KIND}/{device_id}")  # type: ignore[attr-defined]
    if not saved or saved.get("features") != list(feature_names):
        return None
    return cls.from_dict(saved)  # type: ignore[attr-defined]
