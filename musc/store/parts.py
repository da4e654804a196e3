"""Parts: the unit of resumable progress inside a long stage (a batch, a tile), each a small artifact
in ``<key>.parts/``; and what a killed writer left behind (temporary files, parts of keys nobody
builds any more)."""
from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import Any, Mapping

import h5py

from .catalog import lock_path, manifest_path, part_path, parts_dir, parts_folders, temporary_files
from .verification import forget_under, valid_digest
from .writing import write_artifact


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
    forget_under(parts_dir(path))


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
                forget_under(folder)
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
