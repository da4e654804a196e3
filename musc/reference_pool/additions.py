"""What joins and leaves a pool: a scored run's good images (``musc pool add --pool P RUN``), a
day's parts confirmed good (``musc pool add --pool P DAY``: their stored features, no backbone), and
parts confirmed defective after they joined (``remove_from_pool``, called by the review).

Every change rewrites the pool (atomically, under its lock) and recalibrates it; the pool keeps its
identity. What the size bound drops (the oldest first) is named.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ..store import artifact_lock, clear_temporary_files, open_artifact
from .day import DayError, load_day
from .pool import (DEFAULT_MAX_IMAGES, Images, PoolError, PoolFile, PoolSettings, check_addition, now, open_pool,
                   write_pool)
from .runs import run_images, run_model_files
from .verdicts import standing, verdict_history_path
from .votes import votes_path


class Addition(NamedTuple):
    """What ``musc pool add`` did: images added, the pool's size after, the images left out and why,
    and the images the size bound dropped (oldest first), each with where it came from."""
    added: int
    size: int
    left_out: list[tuple[str, str]]
    dropped: list[tuple[str, str]] = []


def _check_bound(max_images: int | None) -> None:
    if max_images is not None and max_images < 1:
        raise PoolError(f"max_images: must be at least 1, got {max_images}")


def add_run_to_pool(pool_path: str | Path, run: str | Path, include_flagged: bool = False,
                    max_images: int | None = None) -> Addition:
    """Append a scored run's good images to the pool (created if missing; see ``run_images`` for
    what is left out). Refused, with one line: another category, other settings, images already in
    the pool."""
    _check_bound(max_images)
    settings, images, digest, left_out = run_images(run, include_flagged)
    kept = _append(pool_path, settings, images, max_images, {"last_run": digest}, model_files=run_model_files(run))
    return Addition(len(images), kept.count, left_out, kept.dropped)


def _append(pool_path: str | Path, settings: PoolSettings, images: Images, max_images: int | None,
            inputs: dict[str, str], expected_id: str | None = None, model_files: Sequence[Path] = ()):
    pool_path = Path(pool_path).resolve()  # a pool reached through a symlink: its target is written
    with artifact_lock(pool_path):  # two additions at once: the second waits and adds to the first's pool
        for leftover in (pool_path, votes_path(pool_path)):  # what a killed addition left
            clear_temporary_files(leftover)
        pool = PoolFile(pool_path) if Path(pool_path).exists() else None
        if expected_id is not None and (pool is None or pool.id != expected_id):
            raise PoolError(f"{pool_path}: the pool changed identity meanwhile (made anew); nothing added")
        check_addition(pool, settings, images)
        bound = max_images or (pool.max_images if pool else DEFAULT_MAX_IMAGES)
        if pool is not None:  # the pool's own record of how it scores (precision) stays
            settings = pool.settings
        return write_pool(pool_path, settings, ([pool.images()] if pool else []) + [images], bound, inputs,
                          pool_id=pool.id if pool else None, model_files=[*(pool.model_files if pool else []), *model_files])


def remove_from_pool(pool_path: str | Path, parts: Sequence[str], why: str) -> list[str]:
    """Take the images of these contents (SHA-256) out of the pool, if they are in it: the pool
    rewritten without them and recalibrated, keeping its identity. Returns their names."""
    pool_path = Path(pool_path).resolve()
    with artifact_lock(pool_path):
        for leftover in (pool_path, votes_path(pool_path)):
            clear_temporary_files(leftover)
        pool = PoolFile(pool_path)
        leaving = set(parts) & set(pool.digests)
        if not leaving:
            return []
        keep = np.array([i for i, digest in enumerate(pool.digests) if digest not in leaving], dtype=np.int64)
        every = pool.images()
        staying = Images([every.names[i] for i in keep], [every.digests[i] for i in keep], every.added[keep],
                         lambda r, layer, indices: every.read(r, layer, keep[np.sort(indices)]), every.shape,
                         [every.sources[i] for i in keep],
                         None if every.votes is None else
                         lambda r, layer, set_index, indices: every.votes(r, layer, set_index, keep[np.sort(indices)]))
        gone = [name for name, digest in zip(pool.names, pool.digests) if digest in leaving]
        write_pool(pool_path, pool.settings, [staying], pool.max_images, {"removed": ",".join(sorted(leaving))},
                   pool_id=pool.id, model_files=pool.model_files)
    return [f"{name} ({why})" for name in gone]


def add_day_to_pool(pool_path: str | Path, folder: str | Path, max_images: int | None = None,
                    device: str = "auto", include_normal: bool = False) -> Addition:
    """Append the parts of a day's results folder that an inspector confirmed good (their standing
    verdict ``good``, ``musc review``) to the pool the day was scored against (its identity: a
    moved or copied pool too); with ``include_normal`` also the parts decided normal that no
    inspector called a defect. Their features are read from the day's artifacts (no backbone: each
    part went through it once, when it was scored). The other parts are left out, each named: not
    reviewed, or confirmed defect. ``device`` is kept for callers; nothing is computed on it."""
    from .day import view
    _check_bound(max_images)
    record = load_day(folder)
    if not Path(pool_path).is_file():
        raise PoolError(f"{pool_path}: no such pool; a day's parts join an existing pool (musc pool add "
                        "--pool POOL RUN_FOLDER creates one)")
    pool = open_pool(pool_path)
    if pool.settings.category != record.category:
        raise PoolError(f"{pool_path}: the pool holds category {pool.settings.category!r}; the parts of "
                        f"{record.day} are {record.category!r} (one pool per category)")
    if pool.id != record.pool["id"]:
        raise PoolError(f"{pool_path}: not the pool {record.day} was scored against (identity {pool.id[:12]}, the "
                        f"day's {record.pool['id'][:12]} at {record.pool_file}); a day's parts join the pool "
                        "they were scored and reviewed against")
    day = view(record)
    verdicts = {}  # the standing verdicts: in the history beside the pool the day names, and this one's (a copy)
    for history in dict.fromkeys([verdict_history_path(record.pool_file), verdict_history_path(pool_path)]):
        table = standing(history, pool.id)
        verdicts.update(zip(table["part"], table["verdict"]))
    first = {}
    for row in day.rows:
        first.setdefault(row["part"], row)
    joining = [part for part, row in first.items()
               if verdicts.get(part) == "good" or (include_normal and row["decision"] == "normal"
                                                   and verdicts.get(part) != "defect")]
    if not joining:
        raise DayError(f"{record.folder}: no part of {record.day} is confirmed good (musc review {record.folder} "
                       "--good NAME)" + ("" if include_normal else " or decided normal (--include-normal)"))
    sources = [f"day {record.day} (verdict good)" if verdicts.get(part) == "good" else
               f"day {record.day} (decided normal)" for part in joining]
    features = [open_artifact(record.root / record.parts[part]["features"], "features") for part in joining]
    if any(artifact.config != features[0].config for artifact in features):
        raise PoolError(f"{record.folder}: the day's parts were made with several settings; score it again")
    settings = PoolSettings(record.category, {k: v for k, v in features[0].config.items()
                                              if k not in ("r_list", "part_size")},
                            tuple(int(r) for r in features[0].config["r_list"]), pool.settings.score,
                            tuple(features[0].config["part_size"]) if "part_size" in features[0].config else None)

    def read(r: int, layer: int, indices: np.ndarray) -> np.ndarray:
        return np.concatenate([features[i].read(f"features_r{r}", (layer,)) for i in np.sort(indices)])
    shape = tuple(features[0].shape(f"features_r{settings.r_list[0]}")[2:])
    names = [first[part]["path"] for part in joining]
    images = Images(names, joining, now(len(joining)), read, shape, sources)
    kept = _append(pool_path, settings, images, max_images, {"day": record.pool["digest"]}, expected_id=pool.id)
    left_out = [(row["path"], f"verdict {row['verdict']}" if row["verdict"] else
                 f"not reviewed, decided {row['decision']}" if include_normal else "not reviewed")
                for part, row in first.items() if part not in joining]
    twins = [(row["path"], f"the same part as {first[row['part']]['path']}") for row in day.rows
             if first[row["part"]] is not row and row["part"] in joining]
    return Addition(len(images), kept.count, left_out + twins, kept.dropped)
