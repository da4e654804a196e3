"""Writing, the one way: every file we write goes to a temporary name in its folder and is renamed
into place when complete (``atomic_output``); an artifact is an HDF5 file so written, with its
manifest (``write_artifact``). A write the file system refuses is one line naming the folder and
what to do, mapped in one place (``refused``, ``writing_in``): a full disk (``NoSpaceError``), a
read-only or forbidden location (``ReadOnlyLocation``)."""
from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from . import digests
from .catalog import ARTIFACTS_MARKER, ArtifactError, manifest_path, temporary_path
from .schema import SCHEMA_VERSION, stage_schema
from .verification import remember_written


class NoSpaceError(ArtifactError):
    """A write ran out of disk space (or quota); the message names the folder and what to do."""


class ReadOnlyLocation(ArtifactError):
    """A write the file system refused (a read-only mount, no permission): one line naming the
    folder, why, and what to do (``advice``; a command that knows a better way out gives its own:
    ``advised``). Reading needs no write access: ``musc inspect FILE`` and ``musc report ROOT --to
    ELSEWHERE`` work on a read-only artifacts folder."""

    def __init__(self, folder: str | Path, reason: str, what: str = "", advice: str = ""):
        self.folder, self.reason, self.what = Path(folder), reason, what
        self.advice = advice or READ_ONLY_ADVICE
        super().__init__(f"{what + ': ' if what else ''}cannot write to {folder} ({reason}): {self.advice}")

    def advised(self, advice: str) -> "ReadOnlyLocation":
        """The same refusal with ``advice`` as what to do."""
        return ReadOnlyLocation(self.folder, self.reason, self.what, advice)

    def __reduce__(self):  # rebuilt from its fields, not its message (a Dask worker's error travels pickled)
        return ReadOnlyLocation, (self.folder, self.reason, self.what, self.advice)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
READ_ONLY_ADVICE = "make it writable, or work in a folder you can write"


def no_space(folder: str | Path) -> NoSpaceError:
    return NoSpaceError(f"{folder}: no space left on the device; free some space (or write to another folder) "
                        f"and rerun: what was finished is kept (a run's batches, tiles and stages; a pool as it was)")


def read_only_location(folder: str | Path, error: OSError, what: str = "",
                       advice: str = READ_ONLY_ADVICE) -> ReadOnlyLocation:
    """``[what: ]cannot write to <folder> (<reason>): <advice>``, one line."""
    return ReadOnlyLocation(folder, error.strerror or os.strerror(error.errno or 0) or str(error), what, advice)


def refused(error: BaseException, folder: str | Path, what: str = "") -> ArtifactError | None:
    """The one mapping of a write the file system refused to the line a user reads: a full disk
    (``NoSpaceError``), a read-only or forbidden location (``ReadOnlyLocation``); None for any
    other error. ``folder``: where the write went."""
    if not isinstance(error, OSError):
        return None
    if error.errno in NO_SPACE:
        return no_space(folder)
    if error.errno in READ_ONLY:
        return read_only_location(folder, error, what)
    return None


@contextlib.contextmanager
def writing_in(folder: str | Path, what: str = "") -> Iterator[None]:
    """A block that writes in ``folder`` (creates, replaces, removes, locks files there): an
    OSError the file system gave for that write (``refused``) becomes its one line."""
    try:
        yield
    except OSError as error:
        mapped = refused(error, folder, what)
        if mapped is None:
            raise
        raise mapped from None


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
    naming the folder (``NoSpaceError``), and so is a read-only or forbidden folder
    (``ReadOnlyLocation``): a refused write of the temporary file, the target or its folder (a
    refused read of another file inside the block keeps its own error)."""
    target = Path(target)
    scratch = temporary_path(target)
    try:
        yield scratch
        with open(scratch, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(scratch, target)
    except OSError as error:
        ours = error.filename is None or _named(error.filename) in (scratch, target, target.parent)
        mapped = refused(error, target.parent) if error.errno in NO_SPACE or ours else None
        if mapped is None:
            raise
        raise mapped from None
    finally:
        if os.path.lexists(scratch):  # (unlink of a missing file in a read-only folder: EROFS, not ENOENT)
            scratch.unlink()
    _fsync_dir(target.parent)


def _named(filename: Any) -> Path | None:
    try:
        return Path(os.fsdecode(filename))
    except TypeError:  # a file descriptor
        return None


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
    with writing_in(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as scratch:
        with _Sink(scratch, "w+") as sink:
            try:
                with h5py.File(sink, "w") as f:
                    _fill_artifact(f, path, stage, config, inputs, arrays, attrs, code_version, fill)
            finally:
                if sink.failure is not None:  # what HDF5 did after a dropped write does not matter
                    mapped = refused(sink.failure, path.parent)
                    if mapped is not None:
                        raise mapped from None
                    raise ArtifactError(f"{path}: write failed ({sink.failure.strerror or sink.failure})") from None
        digest = digests.file_sha256(scratch)  # hashed as written, before the rename: not read back later
    atomic_write_text(manifest_path(path), json.dumps({"sha256": digest, "size": path.stat().st_size, "stage": stage}))
    remember_written(path, digest, stage)
    return digest


_MADE_BY: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("musc_made_by", default={})


@contextlib.contextmanager
def made_by(values: Mapping[str, str]) -> Iterator[None]:
    """Artifacts written in this context (this thread's) record who made them (attribute ``made_by``:
    the orchestrator's run id and deployment; set by its thin face, tasks/stage.py)."""
    token = _MADE_BY.set({key: str(value) for key, value in values.items() if value})
    try:
        yield
    finally:
        _MADE_BY.reset(token)


def _fill_artifact(f: h5py.File, path: Path, stage: str, config: Mapping[str, Any], inputs: Mapping[str, str],
                   arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None, code_version: str,
                   fill: Callable[[h5py.File], None] | None) -> None:
    for name, value in arrays.items():
        _write_value(f, name, value)
    if fill is not None:
        fill(f)
    stage_schema(stage).check_names(list(f.keys()), path)
    _describe_datasets(f, stage)
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["stage"] = stage
    f.attrs["config"] = json.dumps(dict(config), sort_keys=True, default=str)
    f.attrs["inputs"] = json.dumps(dict(inputs), sort_keys=True)
    if _MADE_BY.get():
        f.attrs["made_by"] = json.dumps(_MADE_BY.get(), sort_keys=True)
    f.attrs["code_version"] = code_version
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for name, value in (attrs or {}).items():
        f.attrs[name] = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
    f.attrs["complete"] = True


def _describe_datasets(f: h5py.File, stage: str) -> None:
    """Each dataset describes itself (for h5dump, HDFView, h5py): its meaning and declared shape
    from the schema as attributes ``description`` and ``shape``, its axes named (``dims``)."""
    schema = stage_schema(stage)

    def describe(name: str, item: Any) -> None:
        declared = schema.field(name) if isinstance(item, h5py.Dataset) else None
        if declared is None:
            return
        item.attrs["description"] = declared.meaning
        if declared.shape:
            item.attrs["shape"] = declared.shape
        for axis, label in zip(item.dims, declared.dimensions(item.ndim)):
            axis.label = label
    f.visititems(describe)


def mark_artifacts_root(root: str | Path) -> Path:
    """Create the artifacts root (if needed) with its marker file; ArtifactError naming the folder
    when it cannot be written (read-only, no space): the real cause, before any work starts."""
    root = Path(root)
    marker = root / ARTIFACTS_MARKER
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            marker.write_text("Written by musc: artifacts and reports. Dataset listings skip this folder.\n")
    except OSError as error:
        raise (refused(error, root, "artifacts")
               or ArtifactError(f"artifacts: cannot write to {root} ({error.strerror or error})")) from None
    return check_writable(root, "artifacts")


def check_writable(folder: str | Path, what: str = "", advice: str = READ_ONLY_ADVICE) -> Path:
    """``folder`` (existing) if a file can be made in it; else the one line (``refused``) naming it,
    ``what`` writes there and ``advice``: asked before any work that ends by writing there."""
    folder = Path(folder)
    probe = folder / f".musc-write-test-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        mapped = refused(error, folder, what)
        if isinstance(mapped, ReadOnlyLocation):
            mapped = read_only_location(folder, error, what, advice)
        raise (mapped or ArtifactError(f"{what + ': ' if what else ''}cannot write to {folder} "
                                       f"({error.strerror or error})")) from None
    return folder
