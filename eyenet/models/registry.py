"""Model registry: versions, states and their artifacts (seed: save_model,
get_latest_model, promote_to_production).

A version moves ``staging`` -> ``production`` -> ``archived``. Which version is in
production lives in one registry-state record per model name, changed only by
compare-and-set in the store, so there is exactly one production version at any moment
and a promotion is atomic on SQLite and on MongoDB alike. The state holds the lineage of
past production versions, which is what rollback walks back along.

Registration numbers a version from the store's atomic counter *before* uploading, uploads
artifacts (manifest last), and only then inserts the record: a crash mid-upload leaves an
unused number and an orphan directory, never a listed version that cannot load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eyenet.config import DEFAULT_MODEL_NAME
from eyenet.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    PromotionRejectedError,
    RegistryConflictError,
    RegistryError,
)
from eyenet.models.artifacts import ArtifactStore
from eyenet.store.base import Event
from eyenet.store.protocols import Store

STAGING, PRODUCTION, ARCHIVED = "staging", "production", "archived"
CAS_ATTEMPTS = 20
MAX_VERSION = 2**63 - 1

# A promotion gate looks at a candidate (and its verified local files) and returns the
# reasons it fails; an empty list passes.
Gate = Callable[["ModelVersion", Path], Sequence[str]]


@dataclass
class ModelVersion:
    name: str
    version: int
    state: str
    created_at: str
    artifact_path: str
    manifest_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)
    promoted_at: str | None = None
    gate_report: dict[str, Any] = field(default_factory=dict)  # what the last gate run measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    def __init__(self, store: Store, artifact_root: str | os.PathLike[str]) -> None:
        self.store = store
        self.artifacts = ArtifactStore(artifact_root)

    # -- registration -----------------------------------------------------------------------
    def register(self, model_dir: str | os.PathLike[str], *, name: str = DEFAULT_MODEL_NAME,
                 metrics: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None) -> ModelVersion:
        """Upload ``model_dir`` as the next version of ``name``, in ``staging``."""
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"model name {name!r} must be non-empty, without '/' or a leading '.'")
        if not Path(model_dir).is_dir():
            raise RegistryError(f"model directory {model_dir} does not exist")
        version = self.store.allocate_model_version(name)
        rel = f"{name}/v{version}"
        digest = self.artifacts.upload(model_dir, rel)
        record = {
            "name": name, "version": version, "created_at": _now(), "artifact_path": rel,
            "manifest_sha256": digest, "metrics": dict(metrics or {}),
            "config": dict(config or {}), "tags": dict(tags or {}), "gate_failures": [],
            "promoted_at": None,
        }
        self.store.insert_model_record(record)
        self._event("model_registered", name, version, f"{name} v{version} registered in staging")
        return self.get(name, version)

    # -- reading ----------------------------------------------------------------------------
    def _state(self, name: str) -> tuple[dict[str, Any], int]:
        state, rev = self.store.get_registry_state(name)
        return {"production": state.get("production"), "lineage": list(state.get("lineage", [])),
                "archived": list(state.get("archived", []))}, rev

    @staticmethod
    def _version(record: dict[str, Any], state: dict[str, Any]) -> ModelVersion:
        version = record["version"]
        if state["production"] == version:
            label = PRODUCTION
        elif version in state["archived"]:
            label = ARCHIVED
        else:
            label = STAGING
        fields = {k: record.get(k) for k in ModelVersion.__dataclass_fields__ if k != "state"}
        fields["gate_failures"] = list(fields["gate_failures"] or [])
        fields["gate_report"] = dict(fields["gate_report"] or {})
        return ModelVersion(state=label, **fields)

    def get(self, name: str, version: int) -> ModelVersion:
        if not 1 <= int(version) <= MAX_VERSION:  # stores hold 64-bit integers only
            raise ModelNotFoundError(f"model {name} has no version {version}")
        record = self.store.get_model_record(name, int(version))
        if record is None:
            raise ModelNotFoundError(f"model {name} has no version {version}")
        return self._version(record, self._state(name)[0])

    def list(self, name: str | None = None) -> list[ModelVersion]:
        records = self.store.list_model_records(name)
        states: dict[str, dict[str, Any]] = {}
        out = []
        for record in records:
            if record["name"] not in states:
                states[record["name"]] = self._state(record["name"])[0]
            out.append(self._version(record, states[record["name"]]))
        return out

    def production(self, name: str = DEFAULT_MODEL_NAME) -> ModelVersion | None:
        state, _ = self._state(name)
        return None if state["production"] is None else self.get(name, state["production"])

    def fetch(self, name: str, version: int, cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """A verified local copy of the version's artifacts."""
        mv = self.get(name, version)
        return self.artifacts.fetch(mv.artifact_path, mv.manifest_sha256, cache_dir)

    def opened(self, name: str, version: int) -> contextlib.AbstractContextManager[Path]:
        """A verified local copy of the version's artifacts for a ``with`` block; a copy
        made from a remote root is removed at its end."""
        mv = self.get(name, version)
        return self.artifacts.opened(mv.artifact_path, mv.manifest_sha256)

    # -- lifecycle --------------------------------------------------------------------------
    def promote(self, name: str, version: int, gates: Sequence[Gate] = ()) -> ModelVersion:
        """Validate, then atomically make ``version`` production and archive the old one.

        Validation: artifacts match their manifest, then every gate passes. A failure
        records its reasons on the version (which stays where it was) and raises
        :class:`PromotionRejectedError`.
        """
        candidate = self.get(name, version)
        if candidate.state == PRODUCTION:
            raise RegistryError(f"{name} v{version} is already in production")
        reasons: list[str] = []
        try:
            with self.artifacts.opened(candidate.artifact_path, candidate.manifest_sha256) as local:
                for gate in gates:
                    reasons.extend(f"{getattr(gate, '__name__', type(gate).__name__)}: {r}"
                                   for r in gate(candidate, local))
        except ArtifactIntegrityError as exc:
            reasons.append(f"artifact integrity: {exc}")
        if reasons:
            self.store.update_model_record(name, version, {"gate_failures": reasons})
            self._event("promotion_rejected", name, version,
                        f"{name} v{version} not promoted: " + "; ".join(reasons), "warning")
            raise PromotionRejectedError(f"{name} v{version} was not promoted", reasons)

        def change(state: dict[str, Any]) -> dict[str, Any]:
            old = state["production"]
            lineage = state["lineage"] + ([old] if old is not None else [])
            archived = [v for v in state["archived"] if v != version]
            if old is not None and old not in archived:
                archived.append(old)
            return {"production": version, "lineage": lineage, "archived": sorted(archived)}

        self._compare_and_set(name, change)
        self.store.update_model_record(name, version, {"promoted_at": _now(), "gate_failures": []})
        self._event("model_promoted", name, version, f"{name} v{version} promoted to production")
        return self.get(name, version)

    def rollback(self, name: str = DEFAULT_MODEL_NAME) -> ModelVersion:
        """Make the previous production version production again; the current is archived."""
        state, _ = self._state(name)
        if state["production"] is None:
            raise RegistryError(f"{name} has no production version to roll back from")
        if not state["lineage"]:
            raise RegistryError(f"{name} v{state['production']} has no previous production "
                                "version to roll back to")
        target = self.get(name, state["lineage"][-1])
        self.artifacts.verify(target.artifact_path, target.manifest_sha256)

        def change(current: dict[str, Any]) -> dict[str, Any]:
            if current["production"] != state["production"] or not current["lineage"]:
                raise RegistryConflictError(f"{name}'s production version changed during rollback")
            prev = current["lineage"][-1]
            archived = [v for v in current["archived"] if v != prev]
            archived.append(current["production"])
            return {"production": prev, "lineage": current["lineage"][:-1],
                    "archived": sorted(archived)}

        self._compare_and_set(name, change)
        self._event("model_rolled_back", name, target.version,
                    f"{name} rolled back from v{state['production']} to v{target.version}")
        return self.get(name, target.version)

    def _compare_and_set(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        for _ in range(CAS_ATTEMPTS):
            state, rev = self._state(name)
            if self.store.compare_and_set_registry_state(name, rev, change(state)):
                return
        raise RegistryConflictError(f"{name}: registry state kept changing; gave up after "
                                    f"{CAS_ATTEMPTS} attempts")

    def _event(self, kind: str, name: str, version: int, message: str,
               severity: str = "info") -> None:
        self.store.upsert_event(Event(kind=kind, message=message, severity=severity,
                                      payload={"model": name, "version": version}))


def _now() -> str:
    return datetime.now(UTC).isoformat()
