"""Every exception EyeNet raises on purpose.

One module, one tree, so callers can catch as broadly or narrowly as they need::

    EyeNetError                      base of everything below
    ├── ConfigError                  a config value is wrong (names field, value, expectation)
    ├── TelemetryError               telemetry that cannot be read at all (bad frame / CSV)
    ├── StoreError                   the store failed or refused an operation
    │   ├── StoreConnectionError     the store is unreachable (server down, file locked too long)
    │   └── StoreSchemaError         the store holds data this version cannot read
    ├── RegistryError                model registry operation refused
    │   ├── ModelNotFoundError       no such model name / version
    │   ├── RegistryConflictError    a concurrent change won; the caller may retry
    │   └── PromotionRejectedError   a promotion gate failed; ``reasons`` lists why
    ├── ArtifactError                an artifact cannot be written or read
    │   └── ArtifactIntegrityError   a file is missing, extra or differs from its sha256 manifest
    ├── SourceError                  a telemetry source failed (``device_id`` when one device's)
    ├── PipelineError                the streaming pipeline cannot start or was misused
    └── RequestError                 an API request is refused (``field``; ``status`` the HTTP code)

Foreign exceptions (sqlite3, pymongo, pyarrow, torch) are mapped at the edge with
``raise SomeEyeNetError(...) from exc`` so the original stays in ``__cause__``.

Exceptions cross Ray actor boundaries by pickling. ``BaseException.__reduce__`` rebuilds
an exception from ``self.args`` only, so every class here passes *all* its constructor
arguments to ``super().__init__`` (keyword-only extras are folded into ``args`` and
unfolded again), and an unpickled exception keeps its fields.
"""

from __future__ import annotations


class EyeNetError(Exception):
    """Base class for all EyeNet errors."""


class ConfigError(EyeNetError, ValueError):
    """A configuration value is missing or invalid.

    ``field`` is the dotted path of the offending field (or ``None`` for whole-file
    problems), ``value`` the offending value and ``expected`` what would be accepted.
    """

    def __init__(self, message: str, field: str | None = None, value: object = None,
                 expected: str | None = None) -> None:
        super().__init__(message, field, value, expected)
        self.field = field
        self.value = value
        self.expected = expected

    def __str__(self) -> str:
        return str(self.args[0])


class TelemetryError(EyeNetError, ValueError):
    """Telemetry input that cannot be interpreted at all (not a per-sample reject)."""


class StoreError(EyeNetError):
    """The store failed or refused an operation."""


class StoreConnectionError(StoreError):
    """The store could not be reached (server down, database locked past the timeout)."""


class StoreSchemaError(StoreError):
    """The store contains data in a layout this version does not understand."""


class RegistryError(EyeNetError):
    """A model registry operation was refused."""


class ModelNotFoundError(RegistryError, LookupError):
    """No model with that name (and version) is registered."""


class RegistryConflictError(RegistryError):
    """A concurrent registry change won a race; retrying is safe."""


class PromotionRejectedError(RegistryError):
    """A promotion gate failed. ``reasons`` holds one human-readable line per failure."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message, list(reasons or []))
        self.reasons = list(reasons or [])

    def __str__(self) -> str:
        if not self.reasons:
            return str(self.args[0])
        return f"{self.args[0]}: " + "; ".join(self.reasons)


class ArtifactError(EyeNetError):
    """An artifact could not be written or read."""


class ArtifactIntegrityError(ArtifactError):
    """An artifact differs from its manifest: ``path`` names the file at fault."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message, path)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class SourceError(EyeNetError):
    """A telemetry source could not deliver: ``source`` names it, ``device_id`` the device
    when only one device failed (collectors retry it with backoff; others go on)."""

    def __init__(self, message: str, source: str | None = None, device_id: str | None = None) -> None:
        super().__init__(message, source, device_id)
        self.source = source
        self.device_id = device_id

    def __str__(self) -> str:
        return str(self.args[0])


class PipelineError(EyeNetError):
    """The streaming pipeline cannot start (no production model, bad source options) or an
    actor was asked for something it does not hold."""


class ServiceUnavailableError(EyeNetError):
    """A part that answers requests was lost mid-request (a replica died, or is being
    replaced): the client should retry after ``retry_after_s``, so the API answers 503 with
    ``Retry-After``, never a 500."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return str(self.args[0])


class RequestError(EyeNetError, ValueError):
    """A request the API refuses: ``field`` names what was wrong, ``status`` the HTTP code."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message, field, status)
        self.field = field
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])
