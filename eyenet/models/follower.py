"""Following the registry's production model: the one mechanism everything that scores uses.

Serve replicas, the feature pool and the monitor's drift reference each hold a
:class:`ProductionFollower`. It asks the registry which version is in production at most
every ``poll_interval_s`` and, when that changed (a promotion or a rollback alike), loads
the new version with the owner's ``load`` and makes it :attr:`~ProductionFollower.current`
in one assignment. Work in flight keeps the :class:`Followed` it read when it started, so
it finishes on the model it started with; nothing restarts.

Ray-free and thread-safe: the shells run :meth:`ProductionFollower.follow` on a thread (or
call :meth:`~ProductionFollower.poll` from a loop they already have), unit tests drive
:meth:`~ProductionFollower.check` with a fake registry and clock.

A failed check (store unreachable, artifact corrupt) keeps the loaded model and is retried
at the next poll: serving on the last good model beats serving nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Registry(Protocol):
    def production(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Followed(Generic[T]):
    """One loaded version: what the owner's ``load`` built for it."""

    version: int
    value: T


class ProductionFollower(Generic[T]):
    def __init__(self, production_version: Callable[[], int | None], load: Callable[[int], T],
                 poll_interval_s: float, *, what: str = "production model",
                 now_s: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(poll_interval_s, int | float) or not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be a number > 0, got {poll_interval_s!r}")
        self._production_version, self._load = production_version, load
        self.poll_interval_s = float(poll_interval_s)
        self.what = what
        self._now_s = now_s
        self._lock = threading.Lock()  # a check on the follow thread and a pin must not interleave
        self._current: Followed[T] | None = None
        self.pinned: int | None = None
        self._next_check_s = now_s()  # the first poll checks at once
        self.counts = {"checks": 0, "switches": 0, "errors": 0}
        self.last_error: str | None = None

    @classmethod
    def of_registry(cls, registry: _Registry, name: str, load: Callable[[int], T],
                    poll_interval_s: float, **kw: Any) -> ProductionFollower[T]:
        """A follower of model ``name``'s production version in ``registry``."""

        def production_version() -> int | None:
            production = registry.production(name)
            return None if production is None else int(production.version)

        kw.setdefault("what", f"{name} production model")
        return cls(production_version, load, poll_interval_s, **kw)

    # -- what is loaded ---------------------------------------------------------------------
    @property
    def current(self) -> Followed[T] | None:
        """The loaded version; read it once per batch so a switch never mixes two models."""
        return self._current

    @property
    def version(self) -> int | None:
        current = self._current
        return None if current is None else current.version

    # -- switching --------------------------------------------------------------------------
    def refresh(self) -> Followed[T] | None:
        """Ask the registry now; load and return the production version if it is not the
        loaded one (None: unchanged, pinned, or no production version). Errors propagate:
        owners that cannot start without a model call this first."""
        with self._lock:
            self.counts["checks"] += 1
            self._next_check_s = self._now_s() + self.poll_interval_s
            if self.pinned is not None:
                return None
            target = self._production_version()
            if target is None or target == self.version:
                # no production version (never promoted): keep whatever is loaded
                return None
            return self._switch(target)

    def check(self) -> Followed[T] | None:
        """:meth:`refresh`, but a failure is logged and counted and the loaded model kept."""
        try:
            return self.refresh()
        except Exception as exc:  # the next poll retries; the owner keeps serving
            self.counts["errors"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("could not follow the %s (keeping v%s): %s", self.what, self.version, exc)
            return None

    def poll(self) -> Followed[T] | None:
        """:meth:`check` when ``poll_interval_s`` has passed since the last check, else None."""
        if self._now_s() < self._next_check_s:
            return None
        return self.check()

    def switch_to(self, version: int) -> Followed[T]:
        """Load ``version`` now and keep following production (a pool started on the version
        its starter saw)."""
        with self._lock:
            return self._switch(_version(version))

    def pin(self, version: int | None) -> Followed[T] | None:
        """Load ``version`` now and stop following (a canary); ``None`` follows production
        again from the next check on."""
        with self._lock:
            if version is None:
                self.pinned = None
                self._next_check_s = self._now_s()
                return None
            version = _version(version)
            followed = self._switch(version) if version != self.version else self._current
            self.pinned = version
            return followed

    def _switch(self, version: int) -> Followed[T]:
        followed = Followed(version, self._load(version))  # a failed load leaves current as it was
        previous = self.version
        self._current = followed  # one assignment: readers see the old or the new, never half
        self.counts["switches"] += 1
        self.last_error = None
        log.info("now on the %s v%s (was v%s)", self.what, version, previous)
        return followed

    # -- running ----------------------------------------------------------------------------
    def follow(self, stop: threading.Event,
               on_switch: Callable[[Followed[T]], None] | None = None) -> None:
        """Check every ``poll_interval_s`` until ``stop`` is set (a thread's target)."""
        while not stop.wait(self.poll_interval_s):
            followed = self.check()
            if followed is not None and on_switch is not None:
                try:
                    on_switch(followed)
                except Exception:  # the owner's hook failing must not end the following
                    self.counts["errors"] += 1
                    log.exception("the %s switch hook failed", self.what)

    def start(self, name: str = "production-follower",
              on_switch: Callable[[Followed[T]], None] | None = None) -> threading.Event:
        """Run :meth:`follow` on a daemon thread; returns the event that stops it."""
        stop = threading.Event()
        threading.Thread(target=self.follow, args=(stop, on_switch), name=name, daemon=True).start()
        return stop

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "pinned": self.pinned, "poll_interval_s": self.poll_interval_s,
                **self.counts, "last_error": self.last_error}


def _version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"model version must be an integer >= 1, got {version!r}")
    return version
