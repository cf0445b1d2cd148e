"""EyeNet: anomaly detection for network-device telemetry.

This package is the Ray-free core (config, telemetry schema, stores, registry, ...);
``actors``, ``serve_app`` and ``jobs`` wrap it for Ray.
"""

__version__ = "0.1.0"
