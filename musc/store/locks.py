"""Locks between processes (``flock``): an artifact built by one run at a time (``artifact_lock``),
a category's run marker held shared by its runs and alone by ``musc clean`` (``running``,
``unless_running``), and ``alone``: a lock taken only when free."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

from .catalog import lock_path, run_marker


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
