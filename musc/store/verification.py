"""Trusting an artifact: its SHA-256 checked against its manifest, its completion flag and schema
version (``verify``), remembered per file identity in this process and, through a record beside the
artifact, across commands, only from a hash made once a later change must show (see
``digests.settled``); opening it (``open_artifact``) and describing it (``describe``, read only)."""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from . import digests
from .catalog import ArtifactError, is_part, manifest_path, temporary_path, verification_record
from .schema import SCHEMA_VERSION, STAGES, stage_schema


@dataclass
class Artifact:
    path: Path
    digest: str
    stage: str
    config: dict[str, Any]
    inputs: dict[str, str]
    attrs: dict[str, Any]

    def read(self, name: str, index: Any = ()) -> np.ndarray:
        if stage_schema(self.stage).field(name) is None and not stage_schema(self.stage).open_datasets:
            raise ArtifactError(f"{self.path}: {name!r} is not a dataset of {self.stage} artifacts")
        with h5py.File(self.path, "r") as f:
            if name not in f:
                raise ArtifactError(f"{self.path}: has no dataset {name!r}")
            value = f[name][index]
        if isinstance(value, np.ndarray) and value.dtype == object:
            return np.array([v.decode() if isinstance(v, bytes) else v for v in value.ravel()],
                            dtype=object).reshape(value.shape)
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        with h5py.File(self.path, "r") as f:
            return f[name].shape


Identity = tuple[int, ...]
_verified: dict[str, tuple[Identity, str, str]] = {}
_verified_lock = threading.Lock()
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar("musc_store_recording", default=True)


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Within the block, verifying writes no record beside any artifact, whatever function asks
    (``musc inspect`` is a read-only command: it leaves the folder as it found it)."""
    token = _recording.set(False)
    try:
        yield
    finally:
        _recording.reset(token)


def _identity(path: Path) -> Identity | None:
    """What changes when a file or its manifest is written, replaced or copied: device, inode,
    size, modification and status-change times of both (the status-change time cannot be set back)."""
    try:
        data, manifest = path.stat(), manifest_path(path).stat()
    except OSError:
        return None
    return (*digests.file_key(data), manifest.st_ino, manifest.st_size, manifest.st_mtime_ns, manifest.st_ctime_ns)


def _times(identity: Identity) -> tuple[int, ...]:
    return identity[3], identity[4], identity[7], identity[8]


def _recorded_verification(path: Path, identity: Identity) -> tuple[Identity, str, str] | None:
    """The record's digest when it holds this identity, hashed once the identity was settled."""
    try:
        record = json.loads(verification_record(path).read_text())
        if (record["schema_version"] == SCHEMA_VERSION and tuple(record["identity"]) == identity
                and digests.settled(_times(identity), int(record["hashed_at_ns"]))):
            return identity, str(record["digest"]), str(record["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _record_verification(path: Path, identity: Identity, digest: str, stage: str, hashed_at_ns: int) -> None:
    """Best effort and not synced: a record that is lost, torn or cannot be written (read-only or
    full folder) only means hashing again later. Parts (verified within one command) get none."""
    if is_part(path):
        return
    record = verification_record(path)
    scratch = temporary_path(record)
    try:
        scratch.write_text(json.dumps({"identity": list(identity), "digest": digest, "stage": stage,
                                       "hashed_at_ns": hashed_at_ns, "schema_version": SCHEMA_VERSION}))
        os.replace(scratch, record)
    except OSError:
        with contextlib.suppress(OSError):
            scratch.unlink()


def verify(path: str | Path, stage: str | None = None, record: bool = True) -> str:
    """The artifact's digest if it is complete and intact; ArtifactError saying why otherwise.

    A file hashed before, in this process or by an earlier one (``verification_record``), and
    unchanged since (same device, inodes, sizes, modification and status-change times of file and
    manifest) is not read again. Only a hash made here, once those times were settled (a later
    change must move them, see ``settled``), is remembered, and recorded beside the file unless
    ``record`` is False (read-only commands: ``musc inspect``)."""
    path = Path(path)
    identity = _identity(path)
    if identity is not None:
        remembered = _verified.get(str(path))
        if remembered is None or remembered[0] != identity:
            remembered = _recorded_verification(path, identity)
        if remembered is not None:
            with _verified_lock:
                _verified[str(path)] = remembered
            if stage is not None and remembered[2] != stage:
                raise ArtifactError(f"{path}: a {remembered[2]!r} artifact, expected {stage!r}")
            return remembered[1]
    started = time.time_ns()
    digest, found_stage = _verify_file(path, stage)
    if identity is not None and _identity(path) == identity and digests.settled(_times(identity), started):
        with _verified_lock:  # unchanged while it was read, and any later change will show
            _verified[str(path)] = (identity, digest, found_stage)
        if record and _recording.get():
            _record_verification(path, identity, digest, found_stage, started)
    return digest


def _verify_file(path: Path, stage: str | None) -> tuple[str, str]:
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact does not exist")
    manifest = manifest_path(path)
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        raise ArtifactError(f"{path}: no valid manifest {manifest.name} (partial write?)") from None
    if path.stat().st_size != recorded.get("size"):
        raise ArtifactError(f"{path}: size {path.stat().st_size} differs from the manifest's {recorded.get('size')} (truncated?)")
    digest = digests.file_sha256(path)  # read now: never a digest remembered of an earlier state
    if digest != recorded.get("sha256"):
        raise ArtifactError(f"{path}: digest mismatch (corrupt file)")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as error:
        raise ArtifactError(f"{path}: not a readable HDF5 file ({error})") from None
    if not attrs.get("complete"):
        raise ArtifactError(f"{path}: incomplete artifact (no completion flag)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {attrs.get('schema_version')} is not {SCHEMA_VERSION}")
    if stage is not None and attrs.get("stage") != stage:
        raise ArtifactError(f"{path}: a {attrs.get('stage')!r} artifact, expected {stage!r}")
    return digest, str(attrs.get("stage"))


def open_artifact(path: str | Path, stage: str | None = None, digest: str | None = None,
                  record: bool = True) -> Artifact:
    """Validate and open an artifact; with ``digest``, also check it is the one expected.
    ``record=False``: write nothing beside it (see ``verify``)."""
    actual = verify(path, stage, record)
    if digest is not None and actual != digest:
        raise ArtifactError(f"{path}: digest {actual[:12]} is not the expected {digest[:12]} (replaced since?)")
    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    try:
        config, inputs = json.loads(attrs["config"]), json.loads(attrs["inputs"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ArtifactError(f"{path}: attributes 'config' and 'inputs' must be JSON (not an artifact of ours?)") from None
    if not isinstance(config, dict) or not isinstance(inputs, dict):
        raise ArtifactError(f"{path}: attributes 'config' and 'inputs' must be JSON objects")
    return Artifact(Path(path), actual, attrs["stage"], config, inputs, attrs)


def valid_digest(path: str | Path, stage: str | None = None) -> str | None:
    try:
        return verify(path, stage)
    except ArtifactError:
        return None


def remove_artifact(path: str | Path) -> None:
    for victim in (Path(path), manifest_path(path), verification_record(path)):
        victim.unlink(missing_ok=True)
    with _verified_lock:  # a removed file's digest forgotten: a run's tile parts come and go by the
        _verified.pop(str(Path(path)), None)  # hundred thousand (190,000 at N = 2,000), about 1.2 KB each


def forget_under(folder: str | Path) -> None:
    """Forget the digests remembered of the files in a folder that was removed (``remove_artifact``
    forgets a file's own)."""
    prefix = str(folder).rstrip(os.sep) + os.sep
    with _verified_lock:
        for name in [name for name in _verified if name.startswith(prefix)]:
            del _verified[name]


# Parts: the unit of resumable progress inside a long stage -------------------------------------

def remember_written(path: Path, digest: str, stage: str) -> None:
    """This process hashed what it wrote: it trusts that digest (in memory only, never in a record
    beside the file) while the file and its manifest keep the identity they have now (a replacement
    is a new inode), so that an artifact is hashed once in the process that writes it."""
    identity = _identity(path)
    if identity is not None:
        with _verified_lock:
            _verified[str(path)] = (identity, digest, stage)




def forget() -> None:
    """Forget every digest this process remembers (as a new process would start)."""
    with _verified_lock:
        _verified.clear()
    digests.forget()


def describe(path: str | Path) -> dict[str, Any]:
    """What an artifact holds: stage, config, provenance, datasets with shapes and dtypes. Read
    only: nothing is written beside the file (no verification record)."""
    path = Path(path)
    try:
        digest = verify(path, record=False)
        status = "complete, digest verified"
    except ArtifactError as error:
        digest, status = None, str(error)
    datasets: dict[str, str] = {}
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            f.visititems(lambda name, obj: datasets.__setitem__(name, f"{obj.shape} {obj.dtype}")
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError as error:
        raise ArtifactError(f"{path}: not a readable HDF5 file ({error})") from None
    for key in ("config", "inputs"):
        if isinstance(attrs.get(key), str):
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError:
                raise ArtifactError(f"{path}: attribute {key!r} is not valid JSON (not an artifact of ours?)") from None
    schema = STAGES.get(str(attrs.get("stage")))
    meanings = {name: (field.meaning if schema and (field := schema.field(name)) else "")
                for name in datasets}
    return {"path": str(path), "status": status, "digest": digest, "attrs": attrs, "datasets": datasets,
            "meanings": meanings}


# The artifacts root: a marker file says "written by musc", so no dataset listing reads it back ----
