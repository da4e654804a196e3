"""New parts scored against a reference pool, each on its own (``musc score-new``, the daily flow):
a walk of the stage graph (features -> pool_score per part, decide per day) between a day's record
and its outputs.

``prepare`` checks the inputs before any work (the output folder, the pool, the rule), names each
part by its content (the SHA-256 of its file; one file under two names, or two copies, is one part)
and adds what was seen to the day's record; the walk (``musc.stages``: here in plain Python, in the
daily flow as Prefect tasks) builds or reuses each part's artifacts; ``conclude`` records the walk's
artifacts and writes the day's outputs from them. A rerun, a retry or a rerun after kill -9 reuses
every artifact that was finished; a part scored again keeps its verdicts (they are records of the
pool's, by part).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..stages import LineRun, Part, build_all
from ..stages.building import built
from ..store import ArtifactError, artifact_lock, file_digest, mark_artifacts_root
from ..store.catalog import DAY
from ..store.naming import named_from
from .day import DAY_RECORD, DayError, DayRecord, DayView, view, write_views
from .pool import PoolError, PoolFile, open_pool
from .rule import DecisionRule
from .verdicts import evidence



def output_folder(out: str | Path, images: Sequence[str | Path]) -> Path:
    """The output folder, checked before any work: never a folder holding the input images (our
    maps would be read back as parts), and writable (marked as ours, so no listing takes it)."""
    target = Path(out).resolve()
    inside = [str(i) for i in images if target == Path(i).resolve().parent or target in Path(i).resolve().parents]
    if inside:
        raise PoolError(f"out: {out} holds the input images (first: {inside[0]}); give a folder of its own")
    try:
        return mark_artifacts_root(out)
    except ArtifactError as error:
        raise PoolError(f"out: {str(error).split(': ', 1)[1]}") from None


def identify(images: Sequence[str | Path]) -> tuple[dict[str, Part], list[tuple[str, str]]]:
    """Each image's part: {name -> Part} (a part: the SHA-256 of the file, the first name it was given
    under, all its names here); and the names whose file cannot be read at all, with why."""
    parts: dict[str, Part] = {}
    by_digest: dict[str, list[str]] = {}
    unreadable = []
    for name in dict.fromkeys(str(image) for image in images):
        try:
            digest = file_digest(name)
        except OSError as error:
            why = error.strerror or type(error).__name__
            unreadable.append((name, f"{name}: cannot be read ({why})"))
            continue
        by_digest.setdefault(digest, []).append(name)
    for digest, names in by_digest.items():
        part = Part(digest, names[0], tuple(names))
        parts.update(dict.fromkeys(names, part))
    return parts, unreadable


@contextlib.contextmanager
def day_lock(folder: Path) -> Iterator[None]:
    """Held while a day's record and outputs are read and written (two calls into one folder, a
    review meanwhile)."""
    with artifact_lock(folder / DAY_RECORD):
        yield


def prepare(pool_path: str | Path, images: Sequence[str | Path], out: str | Path, rule: DecisionRule = DecisionRule(),
            day: str | None = None, artifacts: str | Path | None = None, device: str = "auto",
            source: str | Path | None = None, models=()) -> tuple[LineRun, DayRecord]:
    """Before any work: the output folder, the pool (one of the day's, if it has one), the rule
    (the reviewed rule's verdicts read now); then the images named by content and added to the
    day's record. ``source``: a daily run's folder of the day's images (the day then gets a report
    and a trend, and its parts are named relative to it). ``models``: files or folders where the pool's model
    files may be now (moved since the pool was made). Returns the walk's run (every part of the
    day: earlier calls' too, so that the day's decisions share one threshold and one colour scale)
    and the record."""
    pool = open_pool(pool_path)
    if not len(pool):
        raise PoolError(f"{pool_path}: the pool is empty; add a scored run first (musc pool add)")
    learnt = evidence(pool) if rule.learns else None
    rule.apply(pool, learnt)  # a rule that cannot decide (no calibration, no verdicts yet): said now
    out = output_folder(out, images)
    parts, unreadable = identify(images)
    with day_lock(out):
        record = DayRecord.load(out)
        if record is not None and record.pool["id"] != pool.id:
            raise DayError(f"out: {out} holds a day scored against another pool ({record.pool_file.name}, "
                           f"identity {record.pool['id'][:12]}); give each pool's parts a folder of their own")
        if record is None:
            root = Path(artifacts) if artifacts else out / DAY.artifacts
            record = DayRecord(out, day or out.resolve().name, {}, pool.settings.category, named_from(root, out))
        elif day is not None and record.day != day:
            raise DayError(f"out: {out} holds the day {record.day}, not {day}; give each day a folder of its own")
        record.pool = {"id": pool.id, "path": named_from(pool_path, out), "digest": pool.digest}
        if source is not None:
            record.daily, record.source = True, named_from(source, out)
        for name, part in parts.items():
            record.see(record.name_of(name), part.digest)
        record.save()
    mark_artifacts_root(record.root)
    known = {part.digest: part for part in parts.values()}
    for seen in record.seen:  # earlier calls' parts: read from where they were seen, if needed at all
        known.setdefault(seen["part"], Part(seen["part"], str(record.file_of(seen["name"])), (seen["name"],)))
    run = LineRun(tuple(known.values()), pool.ref(), pool.settings.category, rule, learnt, str(record.root), device,
                  tuple(str(m) for m in models))
    record.not_scored = [{"name": record.name_of(name), "why": why} for name, why in unreadable]
    return run, record


def conclude(run: LineRun, record: DayRecord, refs: dict[str, Any]) -> DayView:
    """Record the walk's artifacts in the day's record and write the day's outputs from them. A
    walk that saw fewer parts than the record holds now (another call added some meanwhile) leaves
    the record's decisions to that call's walk."""
    not_scored = list(record.not_scored)
    for ref in refs.get("features", []):
        if not built(ref):
            not_scored += [{"name": name, "why": _why(ref["not_built"], part.path, name)}
                           for part in run.parts if part.digest == ref["part"] for name in _names(record, part)]
    with day_lock(record.folder):
        current = DayRecord.load(record.folder) or record
        covered = {part.digest for part in run.parts} >= {seen["part"] for seen in current.seen}
        if covered:
            root = Path(run.artifacts)
            for kind in ("features", "pool_score"):
                for ref in refs.get(kind, []):
                    if built(ref):
                        current.parts.setdefault(ref["part"], {})[kind] = named_from(ref["path"], root)
            current.decide = named_from(refs["decide"]["path"], root) if refs.get("decide") else None
            current.not_scored = not_scored
            current.pool = dict(run.pool, path=record.pool["path"])
            current.save()
        for name, why in ((item["name"], item["why"]) for item in current.not_scored):
            warnings.warn(why, stacklevel=2)
        if current.decide is None:
            raise none_scored(run, current)
        day = view(current)
        write_views(day)
    return day


def _names(record: DayRecord, part: Part) -> list[str]:
    return [seen["name"] for seen in record.seen if seen["part"] == part.digest] or [part.path]


def _why(why: str, path: str, name: str) -> str:
    """A part's reason for another name it was seen under (copies named too)."""
    return why if name == path else why.replace(path, name, 1)


def none_scored(run: LineRun, record: DayRecord) -> Exception:
    """The error when no part could be scored, naming the first and why: all of another size than a
    tiled pool's, all unreadable, or some of each."""
    from ..stages.features import NOT_OF_THE_POOLS_SIZE
    skipped = [(item["name"], item["why"]) for item in record.not_scored]
    if not skipped:
        return DayError(f"score-new: no parts given for {record.day}")
    sized = [why for _, why in skipped if why.endswith(NOT_OF_THE_POOLS_SIZE)]
    pool = open_pool(run.pool["path"])
    tiling = pool.settings.tiling
    if tiling is not None and len(sized) == len(skipped):
        return PoolError(f"score-new: none of the {len(skipped)} part(s) has the size of the tiled pool "
                         f"{pool.path.name}'s parts ({tiling.width} x {tiling.height} pixels; first: {skipped[0][0]})")
    from ..inputs.images import UnreadableImage
    if not sized:
        return UnreadableImage(f"score-new: none of the images could be read (first: {skipped[0][1]})")
    return PoolError(f"score-new: none of the {len(skipped)} part(s) could be scored: {len(skipped) - len(sized)} "
                     f"unreadable, {len(sized)} not of the tiled pool's size (first: {skipped[0][1]})")


def score_new_images(pool_path: str | Path, images: Sequence[str | Path], out: str | Path,
                     rule: DecisionRule = DecisionRule(), device: str = "auto", day: str | None = None,
                     artifacts: str | Path | None = None, models=()) -> DayView:
    """Score each new image against the pool only, with the pool's settings (as it would score in
    one batch made of the pool and itself; the other new images never vote), and decide: the
    stages built here in plain Python (``prepare``, ``build_all``, ``conclude``). The outputs go to
    ``out`` (scores.csv, maps/, day.json); the artifacts to ``artifacts`` (default ``out/artifacts``)."""
    run, record = prepare(pool_path, images, out, rule, day, artifacts, device, models=models)
    return conclude(run, record, build_all(run))


def rebuild_day(folder: str | Path) -> Path:
    """A day's outputs drawn again from its artifacts and the pool's verdict history (``musc report
    DAY``); returns its scores.csv."""
    from .day import SCORES_CSV, load_day
    record = load_day(folder)
    with day_lock(record.folder):
        write_views(view(load_day(folder)))
    return record.folder / SCORES_CSV


__all__ = ["PoolFile", "rebuild_day", "conclude", "identify", "output_folder", "prepare", "score_new_images"]
