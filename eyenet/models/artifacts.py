"""Model artifacts under an artifact root, each directory sealed by a sha256 manifest.

The root is a local path or any ``pyarrow.fs`` URI (``s3://bucket/prefix``,
``gs://...``, ``file:///...``). Uploading writes every file while hashing it, then the
manifest last, so a directory without a manifest is an interrupted upload and never
loads. Reading verifies every byte against the manifest: a changed, missing or extra
file is refused with :class:`ArtifactIntegrityError` naming it. The registry also keeps
the manifest's own digest, so replacing file *and* manifest is caught too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from eyenet.errors import ArtifactError, ArtifactIntegrityError

MANIFEST = "MANIFEST.json"
CHUNK_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = str(root)
        try:
            if "://" in self.root:
                self.fs, base = pafs.FileSystem.from_uri(self.root)
            else:
                self.fs, base = pafs.LocalFileSystem(), os.path.abspath(self.root)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ArtifactError(f"cannot open artifact root {self.root!r}: {exc}") from exc
        self.base = base.rstrip("/")
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}".rstrip("/")

    def uri(self, rel: str) -> str:
        return self.path(rel) if self.is_local else f"{self.root.rstrip('/')}/{rel}"

    # -- writing ----------------------------------------------------------------------------
    def upload(self, local_dir: str | os.PathLike[str], rel: str) -> str:
        """Copy a local directory to ``rel`` under the root; returns the manifest's sha256."""
        src = Path(local_dir)
        if not src.is_dir():
            raise ArtifactError(f"model directory {src} does not exist or is not a directory")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        if not files:
            raise ArtifactError(f"model directory {src} holds no files")
        if any(p.name == MANIFEST for p in files):
            raise ArtifactError(f"{src} already contains a {MANIFEST}; pass the raw model files")
        dest = self.path(rel)
        entries: dict[str, dict[str, Any]] = {}
        try:
            self.fs.create_dir(dest, recursive=True)
            for p in files:
                name = p.relative_to(src).as_posix()
                parent = str(PurePosixPath(f"{dest}/{name}").parent)
                self.fs.create_dir(parent, recursive=True)
                digest = hashlib.sha256()
                size = 0
                with open(p, "rb") as fin, self.fs.open_output_stream(f"{dest}/{name}") as fout:
                    while chunk := fin.read(CHUNK_BYTES):
                        digest.update(chunk)
                        fout.write(chunk)
                        size += len(chunk)
                entries[name] = {"sha256": digest.hexdigest(), "bytes": size}
            manifest = json.dumps({"format": 1, "created_at": datetime.now(UTC).isoformat(),
                                   "files": entries}, indent=1, sort_keys=True).encode()
            with self.fs.open_output_stream(f"{dest}/{MANIFEST}") as fout:
                fout.write(manifest)  # last: its presence marks a complete upload
        except OSError as exc:
            raise ArtifactError(f"cannot write artifacts to {self.uri(rel)}: {exc}") from exc
        return sha256_bytes(manifest)

    # -- reading ----------------------------------------------------------------------------
    def read_manifest(self, rel: str, expected_sha256: str | None = None) -> dict[str, Any]:
        path = f"{self.path(rel)}/{MANIFEST}"
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read()
        except (FileNotFoundError, OSError) as exc:
            raise ArtifactIntegrityError(
                f"{self.uri(rel)} has no readable {MANIFEST} (incomplete upload?): {exc}",
                MANIFEST) from exc
        if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
            raise ArtifactIntegrityError(
                f"{self.uri(rel)}/{MANIFEST} differs from the digest the registry recorded",
                MANIFEST)
        try:
            manifest = json.loads(raw)
            manifest["files"].items()
        except (ValueError, KeyError, AttributeError) as exc:
            raise ArtifactIntegrityError(f"{self.uri(rel)}/{MANIFEST} is malformed", MANIFEST) from exc
        return manifest

    def verify(self, rel: str, expected_sha256: str | None = None,
               copy_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Check every file against the manifest (optionally copying it out as it is read)."""
        manifest = self.read_manifest(rel, expected_sha256)
        base = self.path(rel)
        stored = self._list_files(base)
        extra = sorted(stored - set(manifest["files"]) - {MANIFEST})
        if extra:
            raise ArtifactIntegrityError(
                f"{self.uri(rel)} holds file(s) not in its manifest: {extra}", extra[0])
        for name, entry in sorted(manifest["files"].items()):
            if name not in stored:
                raise ArtifactIntegrityError(f"{self.uri(rel)}/{name} is missing", name)
            digest = hashlib.sha256()
            out = None
            if copy_to is not None:
                target = Path(copy_to) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                out = open(target, "wb")  # noqa: SIM115 - closed in finally
            try:
                with self.fs.open_input_stream(f"{base}/{name}") as fin:
                    while chunk := fin.read(CHUNK_BYTES):
                        digest.update(chunk)
                        if out is not None:
                            out.write(chunk)
            finally:
                if out is not None:
                    out.close()
            if digest.hexdigest() != entry["sha256"]:
                raise ArtifactIntegrityError(
                    f"{self.uri(rel)}/{name} was modified: its sha256 does not match the manifest",
                    name)
        return manifest

    def fetch(self, rel: str, expected_sha256: str | None = None,
              cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """A verified local directory holding the artifacts.

        A local root is verified in place and returned as is; a remote one is copied into
        ``cache_dir`` (a fresh temporary directory by default) while being verified.
        """
        if self.is_local:
            self.verify(rel, expected_sha256)
            return Path(self.path(rel))
        target = Path(cache_dir or tempfile.mkdtemp(prefix="eyenet-model-"))
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            self.verify(rel, expected_sha256, copy_to=staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @contextlib.contextmanager
    def opened(self, rel: str, expected_sha256: str | None = None) -> Iterator[Path]:
        """:meth:`fetch` for the length of a ``with`` block: a remote root's copy lives in
        a temporary directory removed at its end (a process that loads a model on every
        promotion would otherwise fill the disk with copies)."""
        if self.is_local:
            yield self.fetch(rel, expected_sha256)
            return
        with tempfile.TemporaryDirectory(prefix="eyenet-model-") as tmp:
            yield self.fetch(rel, expected_sha256, Path(tmp) / "model")

    def _list_files(self, base: str) -> set[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except FileNotFoundError as exc:
            raise ArtifactIntegrityError(f"artifact directory {base} does not exist", None) from exc
        return {PurePosixPath(i.path).relative_to(base).as_posix()
                for i in infos if i.type == pafs.FileType.File}


def load_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state dict saved with ``torch.save``, loaded with ``weights_only=True``.

    ``weights_only`` refuses pickled code, so a weights file cannot run anything on load.
    """
    import torch  # imported here: torch costs seconds to import and most callers never load

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ArtifactError(f"weights file {path} does not exist") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ArtifactError(f"weights file {path} is not a plain tensor state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ArtifactError(f"weights file {path} holds a {type(state).__name__}, expected a state dict")
    return state
