"""Locks between processes (``flock``): an artifact built by one run at a time (``artifact_lock``),
a category's run marker held shared by its runs and alone by ``musc clean`` (``running``,
``unless_running``), and ``alone``: a lock taken only when free.

In a location this process cannot write (a read-only mount, no permission) a lock file is opened
read-only where it exists (``flock`` needs no write access) and not taken where it does not:
reading needs no lock there (nobody can build in a read-only folder), and a write that is then
attempted fails in one line naming the folder (``writing.ReadOnlyLocation``)."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO, Iterator

from .catalog import lock_path, run_marker
from .writing import READ_ONLY, refused, writing_in


@contextlib.contextmanager
def _lock_file(lock_file: Path, make_folder: bool = True) -> Iterator[IO | None]:
    """The lock file opened for ``flock``: created when missing (and its folder, ``make_folder``);
    in a location we cannot write, the existing file opened read-only, or None when there is none.
    Any other refusal (a full disk) is one line naming the folder."""
    if make_folder:
        with writing_in(lock_file.parent):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(lock_file, "a+")
    except OSError as error:
        if error.errno not in READ_ONLY:
            raise refused(error, lock_file.parent) or error
        try:
            handle = open(lock_file)
        except FileNotFoundError:
            yield None
            return
    with handle:
        yield handle


@contextlib.contextmanager
def _held(handle: IO | None, mode: int) -> Iterator[None]:
    if handle is None:
        yield
        return
    fcntl.flock(handle, mode)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def running(category_folder: str | Path) -> Iterator[None]:
    """Held (shared: many runs at once) while a run of the category computes or reuses its stages."""
    with _lock_file(run_marker(category_folder)) as handle, _held(handle, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def alone(lock_file: str | Path) -> Iterator[bool]:
    """Yields True, holding ``lock_file`` exclusively, when nobody holds it (or it does not exist);
    else False at once (nothing waits)."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        yield True
        return
    with _lock_file(lock_file, make_folder=False) as handle:
        if handle is None:  # gone meanwhile
            yield True
            return
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
    with _lock_file(lock_path(path)) as handle, _held(handle, fcntl.LOCK_EX):
        yield
