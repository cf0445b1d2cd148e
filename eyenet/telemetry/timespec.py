"""Points in time as users type them: ``30m`` / ``1h`` / ``2d`` ago, or ISO 8601."""

from __future__ import annotations

import re

from eyenet.errors import ConfigError
from eyenet.store.base import to_timestamp_ms

DURATION_RE = re.compile(r"^(?P<n>\d+(\.\d+)?)(?P<unit>s|m|h|d|w)$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now_s: float) -> float:
    """``1h``/``30m``/``2d`` before now, or a point in time (ISO 8601 text)."""
    match = DURATION_RE.match(text.strip())
    if match:
        return now_s - float(match["n"]) * UNIT_S[match["unit"]]
    try:
        return to_timestamp_ms(text) / 1000.0
    except Exception as exc:
        raise ConfigError(f"--since {text!r} is neither a duration (30s, 15m, 1h, 2d, 1w) nor a "
                          "point in time (ISO 8601)", "since", text) from exc
