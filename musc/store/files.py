"""The HDF5 artifact format.

An artifact is ``<key>.h5`` plus its manifest ``<key>.json`` (the file's SHA-256 and size). The
HDF5 file carries attributes: schema version, stage, the full stage config (JSON), the digests
of its inputs, the code version, the creation time, and ``complete`` written last.

Writes are atomic: a temporary file in the same folder, fsync, rename; the manifest is written
the same way after the rename. A reader trusts an artifact only when the manifest exists, the
digest matches, and the completion flag and schema version are right.

Long stages write parts (one small artifact per batch or tile) into ``<key>.parts/``; a rerun
after a crash keeps the complete parts and the final merge removes the folder.
"""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import functools
import errno
import hashlib
import io
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from .catalog import (ARTIFACTS_MARKER, ArtifactError, artifact_path, is_part, lock_path, manifest_path,
                      part_path, parts_dir, parts_folders, run_marker, temporary_files, temporary_path,
                      verification_record)
from .schema import SCHEMA_VERSION, STAGES, stage_schema


class NoSpaceError(ArtifactError):
    """A write ran out of disk space (or quota); the message names the folder and what to do."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(folder: str | Path) -> NoSpaceError:
    return NoSpaceError(f"{folder}: no space left on the device; free some space (or write to another folder) "
                        f"and rerun: what was finished is kept (a run's batches, tiles and stages; a pool as it was)")


class _Sink(io.FileIO):
    """The file HDF5 writes through. A failed write (disk full) is remembered and its data dropped,
    so that HDF5 itself never sees an error: a failed HDF5 close leaves the library in a state
    that crashes the interpreter at exit (a segmentation fault). The writer checks ``failure``
    once HDF5 has closed, and the half-written temporary file is removed."""
    failure: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.failure is None and done < len(view):
            try:
                written = super().write(view[done:])
            except OSError as error:
                self.failure = error
                break
            if not written:
                self.failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                break
            done += written
        return len(view)


def stable_hash(*items: Any, length: int = 16) -> str:
    """A short hex key of JSON-serialisable items (sorted keys: the same inputs, the same key)."""
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Trusting a file's identity (inode, size, modification and status-change times) instead of its
# bytes is safe only once a later change must give another identity: a write within the same tick
# of the file system's clock keeps the times (one second on ext3 or HFS+, two on FAT, a kernel tick
# on ext4). So an identity is trusted, and remembered, only when its times were older than that
# resolution when the file was hashed; a younger one is hashed each time.
COARSE_TIMESTAMP_NS = 2_000_000_000   # whole-second times (FAT's are 2 s apart)
FINE_TIMESTAMP_NS = 50_000_000        # sub-second times: a few kernel ticks (at most 10 ms each)


def _settle_ns(*times_ns: int) -> int:
    """How old timestamps must be before a change is sure to move them: whole seconds (or coarser)
    show a coarse file system."""
    return COARSE_TIMESTAMP_NS if all(t % 1_000_000_000 == 0 for t in times_ns) else FINE_TIMESTAMP_NS


def settled(times_ns: tuple[int, ...], at_ns: int | None = None) -> bool:
    """Whether a change made after ``at_ns`` (default: now) must give other timestamps than these."""
    at_ns = time.time_ns() if at_ns is None else at_ns
    return at_ns - max(times_ns) >= _settle_ns(*times_ns)


def _file_key(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@functools.lru_cache(maxsize=65536)
def _cached_file_sha256(path: str, key: tuple[int, ...]) -> str:
    return file_sha256(path)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, cached while its identity (device, inode, size, modification and
    status-change times) stays the same, and only once those times are settled (see ``settled``)."""
    stat = os.stat(path)
    if not settled((stat.st_mtime_ns, stat.st_ctime_ns)):
        return file_sha256(path)
    return _cached_file_sha256(str(path), _file_key(stat))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """The one way we write a file: yields a temporary path in the target's folder to write to;
    when the block ends without error it is synced and renamed onto ``target`` (readers see the old
    file or the new one, never half of one); on any error it is removed. A full disk is one line
    naming the folder (``NoSpaceError``)."""
    target = Path(target)
    scratch = temporary_path(target)
    try:
        yield scratch
        with open(scratch, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(scratch, target)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(target.parent) from None
        raise
    finally:
        scratch.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_output(target) as scratch:
        scratch.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def _write_value(group: h5py.Group, name: str, value: Any) -> None:
    if isinstance(value, Mapping):
        sub = group.create_group(name)
        for child, child_value in value.items():
            _write_value(sub, child, child_value)
        return
    array = np.asarray(value)
    if array.dtype.kind in "US" or (array.dtype == object):
        group.create_dataset(name, data=np.asarray(value, dtype=object), dtype=h5py.string_dtype())
    else:
        group.create_dataset(name, data=array)


def write_artifact(path: str | Path, stage: str, config: Mapping[str, Any], inputs: Mapping[str, str],
                   arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
                   code_version: str = "", fill: Callable[[h5py.File], None] | None = None) -> str:
    """Write an artifact atomically; returns its digest (SHA-256 of the HDF5 file).

    ``fill(file)``, when given, streams further datasets into the open file (for arrays too large
    to hold in memory at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with _Sink(tmp, "w+") as sink:
            try:
                with h5py.File(sink, "w") as f:
                    _fill_artifact(f, path, stage, config, inputs, arrays, attrs, code_version, fill)
            finally:
                if sink.failure is not None:  # what HDF5 did after a dropped write does not matter
                    if sink.failure.errno in NO_SPACE:
                        raise no_space(path.parent) from None
                    raise ArtifactError(f"{path}: write failed ({sink.failure.strerror or sink.failure})") from None
            sink.flush()
            os.fsync(sink.fileno())
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(path.parent) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    try:
        atomic_write_bytes(manifest_path(path), json.dumps(
            {"sha256": digest, "size": path.stat().st_size, "stage": stage}).encode())
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(path.parent) from None
        raise
    _remember_written(path, digest, stage)
    return digest


def _remember_written(path: Path, digest: str, stage: str) -> None:
    """This process hashed what it wrote: it trusts that digest (in memory only, never in a record
    beside the file) while the file and its manifest keep the identity they have now (a replacement
    is a new inode), so that an artifact is hashed once in the process that writes it."""
    identity = _identity(path)
    if identity is not None:
        with _verified_lock:
            _verified[str(path)] = (identity, digest, stage)


def _fill_artifact(f: h5py.File, path: Path, stage: str, config: Mapping[str, Any], inputs: Mapping[str, str],
                   arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None, code_version: str,
                   fill: Callable[[h5py.File], None] | None) -> None:
    for name, value in arrays.items():
        _write_value(f, name, value)
    if fill is not None:
        fill(f)
    stage_schema(stage).check_names(list(f.keys()), path)
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["stage"] = stage
    f.attrs["config"] = json.dumps(dict(config), sort_keys=True, default=str)
    f.attrs["inputs"] = json.dumps(dict(inputs), sort_keys=True)
    f.attrs["code_version"] = code_version
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for name, value in (attrs or {}).items():
        f.attrs[name] = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
    f.attrs["complete"] = True


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
    return (*_file_key(data), manifest.st_ino, manifest.st_size, manifest.st_mtime_ns, manifest.st_ctime_ns)


def _times(identity: Identity) -> tuple[int, ...]:
    return identity[3], identity[4], identity[7], identity[8]


def _recorded_verification(path: Path, identity: Identity) -> tuple[Identity, str, str] | None:
    """The record's digest when it holds this identity, hashed once the identity was settled."""
    try:
        record = json.loads(verification_record(path).read_text())
        if (record["schema_version"] == SCHEMA_VERSION and tuple(record["identity"]) == identity
                and settled(_times(identity), int(record["hashed_at_ns"]))):
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
    if identity is not None and _identity(path) == identity and settled(_times(identity), started):
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
    digest = file_sha256(path)  # read now: never a digest remembered of an earlier state
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


# Parts: the unit of resumable progress inside a long stage -------------------------------------

def write_part(path: str | Path, name: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_artifact(folder / f"{name}.h5", "part", {}, {}, arrays, attrs)


def read_part(path: str | Path, name: str, only: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """A complete part's arrays (all, or ``only`` those) and attributes, or None (missing, partial
    or corrupt: redo it)."""
    target = part_path(path, name)
    if valid_digest(target) is None:
        return None
    with h5py.File(target, "r") as f:
        data = {k: f[k][()] for k in (only or f.keys())}
        data.update({f"attr:{k}": v for k, v in f.attrs.items()})
    return data


def clear_parts(path: str | Path) -> None:
    shutil.rmtree(parts_dir(path), ignore_errors=True)


def clear_orphan_parts(path: str | Path) -> list[Path]:
    """Remove the ``.parts`` folders of the other keys in this artifact's folder that nobody is
    building now (their lock is free): progress of a run whose inputs changed since (images
    replaced between a crash and the rerun), never resumed. Only for stages whose parts are
    written under the artifact's lock (extract). Returns what was removed."""
    path = Path(path)
    removed = []
    for folder in parts_folders(path.parent):
        if folder == parts_dir(path) or not folder.is_dir():
            continue
        lock = lock_path(folder.with_suffix(".h5"))
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built now
            try:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    return removed


def clear_temporary_files(path: str | Path) -> None:
    """Remove the temporary files a killed writer left for this artifact (call under its lock:
    then nobody else is writing them)."""
    path = Path(path)
    for target in (path, manifest_path(path)):
        for leftover in temporary_files(target):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def running(category_folder: str | Path) -> Iterator[None]:
    """Held (shared: many runs at once) while a run of the category computes or reuses its stages."""
    marker = run_marker(category_folder)
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(marker, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def alone(lock_file: str | Path) -> Iterator[bool]:
    """Yields True, holding ``lock_file`` exclusively, when nobody holds it (or it does not exist);
    else False at once (nothing waits)."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        yield True
        return
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unless_running(category_folder: str | Path):
    """True (held alone) when no run of the category is going on; else False at once."""
    return alone(run_marker(category_folder))


@contextlib.contextmanager
def artifact_lock(path: str | Path) -> Iterator[None]:
    """An exclusive inter-process lock for computing one artifact (two runs never do it twice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(path), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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

def mark_artifacts_root(root: str | Path) -> Path:
    """Create the artifacts root (if needed) with its marker file; ArtifactError naming the folder
    when it cannot be written (read-only, no space): the real cause, before any work starts."""
    root = Path(root)
    marker = root / ARTIFACTS_MARKER
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            marker.write_text("Written by musc: artifacts and reports. Dataset listings skip this folder.\n")
        probe = root / f".musc-write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(root) from None
        raise ArtifactError(f"artifacts: cannot write to {root} ({error.strerror or error})") from None
    return root
