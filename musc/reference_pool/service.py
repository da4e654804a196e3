"""The pool service: fill a pool from scored runs (``musc pool add``), score new images against it
(``musc score-new``, the daily-folder flow) and decide normal or anomalous."""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from ..inputs.config import ExtractSettings, ScoreSettings
from ..inputs.datasets import UnreadableImage, load_image
from ..method.lnamd import aggregate
from ..method.tiling import TileSizeError
from ..stages.extract import forward
from ..outputs.evaluation import decision_words, decisions, evaluation_reduction, f1_optimal_threshold, reduce_map
from ..outputs.figures import save_overlay
from ..outputs.rebuild import inputs_of
from ..store import (ArtifactError, artifact_lock, atomic_output, file_digest, mark_artifacts_root,
                     open_artifact, scratch_folder)
from ..store.catalog import derived_name
from .pool import DEFAULT_MAX_IMAGES, Images, PoolError, PoolFile, PoolSettings, check_addition, now, write_pool
from .review import (SCORES_CSV, ReviewError, load_day, load_day_record, read_verdicts, verdict_history_path,
                     write_day_record)
from .scoring import calibrated_threshold, part_maps, read_rows

RUN_FIELDS = ("dataset", "category")  # what the extract config says of the run, not of the features
DEFAULT_FALSE_ALARM_RATE = 0.01
SCORES_CSV_COLUMNS = ("path", "score", "decision", "map_png")


def evaluation_in(path: str | Path) -> Path:
    """An evaluate artifact, or the newest one under a category folder."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob("evaluate/*.h5"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ArtifactError(f"{path}: no evaluate artifact here (give a category folder of a run, or the .h5)")
    return candidates[-1]


def run_lineage(run: str | Path) -> tuple[PoolSettings, dict[int, Path], Any]:
    """What a scored run's images were made and scored with (as a pool records it), its aggregate
    artifact per degree r, and its extract artifact."""
    evaluate_path = evaluation_in(run)
    classify_path = inputs_of(evaluate_path, "classify")[0]
    extract = open_artifact(inputs_of(evaluate_path, "extract")[0], "extract")
    aggregates, scoring = {}, None
    for score_path in inputs_of(classify_path, "score"):
        scoring = ScoreSettings.from_recorded(open_artifact(score_path, "score").config)
        aggregate_path = inputs_of(score_path, "aggregate")[0]
        aggregates[int(open_artifact(aggregate_path, "aggregate").config["r"])] = aggregate_path
    tiled = extract.config.get("tiles") is not None  # a tiled run's masks are at its parts' full resolution
    settings = PoolSettings(str(extract.config["category"]),
                            {k: v for k, v in extract.config.items() if k not in RUN_FIELDS},
                            tuple(sorted(aggregates)), scoring,
                            tuple(int(n) for n in extract.shape("masks")[1:]) if tiled else None)
    return settings, aggregates, extract


def planned_settings(run) -> PoolSettings:
    """What a run (``musc.stages.Run``) will record as ``run_lineage`` reads it, known before any
    work: its extract plan's recorded settings, its degrees and MSM settings, and, tiled, the size of
    its images (their first readable one's)."""
    from ..stages import first_plan
    from ..stages.extract import tiling_of
    recorded = first_plan(run).key.config
    tiling = tiling_of(run.images, run.config.extract)
    return PoolSettings(str(recorded["category"]), {k: v for k, v in recorded.items() if k not in RUN_FIELDS},
                        tuple(sorted({int(r) for r in run.config.r_list})), run.config.score,
                        None if tiling is None else (tiling.height, tiling.width))


def run_images(run: str | Path, include_flagged: bool = False
               ) -> tuple[PoolSettings, Images, str, list[tuple[str, str]]]:
    """What a scored run would put in a pool: its settings, its images with their features (their
    source: ``run <evaluate digest[:12]>``), the run's evaluate digest, and the images left out
    with why (``(name, reason)``). A pool holds good parts only: images labelled defective (label
    1) and images the run decided anomalous are left out, unless ``include_flagged``."""
    evaluate_path = evaluation_in(run)
    evaluation = open_artifact(evaluate_path, "evaluate")
    settings, aggregates, extract = run_lineage(evaluate_path)
    names = [str(n) for n in extract.read("names")]
    category = settings.category
    labelled = np.asarray(extract.read("labels")) == 1
    decided = np.asarray(evaluation.read("decisions")) == 1
    reasons = [", ".join(why for why, flagged in (("labelled defective", labelled[i]), ("decided anomalous", decided[i]))
                         if flagged) for i in range(len(names))]
    keep = np.ones(len(names), bool) if include_flagged else ~(labelled | decided)
    left_out = [(f"{category}/{names[i]}", reasons[i]) for i in np.flatnonzero(~keep)]
    if int(settings.score.divide_num) > 1:
        raise PoolError(f"{evaluate_path}: this run scored its images in {settings.score.divide_num} subsets "
                        "(divide_num); a pool reproduces whole-batch scoring only")
    chosen = np.flatnonzero(keep)

    def read(r: int, layer: int, indices: np.ndarray) -> np.ndarray:
        artifact = open_artifact(aggregates[r], "aggregate")
        return read_rows(lambda rows: artifact.read("features", (layer, rows)), settings.rows(chosen[np.sort(indices)]))
    shape = tuple(open_artifact(aggregates[settings.r_list[0]], "aggregate").shape("features")[2:])
    images = Images([f"{category}/{names[i]}" for i in chosen],
                    [str(d) for d in extract.read("digests")[chosen]], now(chosen.size), read, shape,
                    [f"run {evaluation.digest[:12]}"] * int(chosen.size))
    return settings, images, evaluation.digest, left_out


class Addition(NamedTuple):
    """What ``musc pool add`` did: images added, the pool's size after, the images left out and why."""
    added: int
    size: int
    left_out: list[tuple[str, str]]


def add_run_to_pool(pool_path: str | Path, run: str | Path, include_flagged: bool = False,
                    max_images: int | None = None) -> Addition:
    """Append a scored run's good images to the pool (created if missing; see ``run_images`` for
    what is left out). Refused, with one line: another category, other settings, images already in
    the pool."""
    if max_images is not None and max_images < 1:
        raise PoolError(f"max_images: must be at least 1, got {max_images}")
    settings, images, digest, left_out = run_images(run, include_flagged)
    size = _append(pool_path, settings, images, max_images, {"last_run": digest})
    return Addition(len(images), size, left_out)


def _append(pool_path: str | Path, settings: PoolSettings, images: Images, max_images: int | None,
            inputs: dict[str, str]) -> int:
    with artifact_lock(pool_path):  # two additions at once: the second waits and adds to the first's pool
        pool = PoolFile(pool_path) if Path(pool_path).exists() else None
        check_addition(pool, settings, images)
        bound = max_images or (pool.max_images if pool else DEFAULT_MAX_IMAGES)
        if pool is not None:  # the pool's own record of how it scores (precision) stays
            settings = pool.settings
        return write_pool(pool_path, settings, ([pool.images()] if pool else []) + [images], bound, inputs)


THRESHOLD_RULES = ("calibrated", "reviewed")


@dataclass(frozen=True)
class DecisionRule:
    """A fixed threshold; or, by ``rule``: one calibrated on the pool at a false-alarm rate (see
    ``calibrated_threshold``, the default), or, opt-in, ``reviewed``: F1-optimal on the scores of
    the parts inspectors reviewed (the pool's verdict history, ``review``: the latest verdict per
    part; defect = anomalous, good = normal), once that history holds both verdicts."""
    threshold: float | None = None
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    rule: str = "calibrated"

    def __post_init__(self) -> None:
        if self.rule not in THRESHOLD_RULES:
            raise PoolError(f"threshold rule: expected {' or '.join(THRESHOLD_RULES)}, got {self.rule!r}")
        if self.rule == "reviewed" and self.threshold is not None:
            raise PoolError("threshold rule: reviewed sets the threshold itself; give no fixed threshold with it")

    def evidence(self, pool: PoolFile) -> dict[str, Any] | None:
        """What the ``reviewed`` rule learns from: the history file and its counts of reviewed parts
        (None for the other rules)."""
        if self.rule != "reviewed":
            return None
        path = verdict_history_path(pool.path)
        reviewed = read_verdicts(path)
        reviewed = reviewed[reviewed["verdict"].isin(["defect", "good"]) & reviewed["score"].notna()]
        return {"history": str(path), "defect": int((reviewed["verdict"] == "defect").sum()),
                "good": int((reviewed["verdict"] == "good").sum()),
                "scores": reviewed["score"].to_numpy(np.float64), "labels": (reviewed["verdict"] == "defect").to_numpy(int)}

    def apply(self, pool: PoolFile) -> tuple[float, str]:
        if self.threshold is not None:
            return float(self.threshold), "fixed"
        if self.rule == "reviewed":
            seen = self.evidence(pool)
            lacking = [v for v in ("defect", "good") if not seen[v]]
            if lacking:
                raise PoolError(f"threshold rule reviewed: the verdict history {seen['history']} holds no "
                                f"{' and no '.join(lacking)} verdict with a score yet ({seen['defect']} defect, "
                                f"{seen['good']} good); review flagged parts (musc review) or use the calibrated rule")
            return (f1_optimal_threshold(seen["labels"], seen["scores"]),
                    f"reviewed: F1-optimal on the scores of {seen['defect'] + seen['good']} reviewed parts "
                    f"({seen['defect']} defect, {seen['good']} good; {Path(seen['history']).name})")
        if not len(pool.self_scores):
            raise PoolError(f"{pool.path}: a calibrated threshold needs a pool of at least 2 images "
                            f"(it has {len(pool)}); add runs or give a fixed threshold")
        return (calibrated_threshold(pool.self_scores, self.false_alarm_rate),
                f"calibrated on the pool: at most {self.false_alarm_rate:g} of its {len(pool)} images' "
                "leave-one-out scores reach it")


def map_names(paths: Sequence[str | Path]) -> list[str]:
    """One distinct, bounded file stem per image whatever the names: the path relative to the
    images' common folder, named by the one rule for derived files (``catalog.derived_name``:
    'day1/part.png' -> 'day1__part-<8 hex>'), the hex of its resolved path, so that parts of two
    calls into one folder never share a map."""
    resolved = [Path(p).resolve() for p in paths]
    base = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    return [derived_name(str(p.relative_to(base)).replace(os.sep, "/"), suffix="", identity=str(p)) for p in resolved]


def pool_backbone(pool: PoolFile, device: str) -> ExtractSettings:
    """The extraction settings of the pool's images, refused (one line naming both) when the model
    or weights file now at the recorded path is not the one the pool was made with (edited since,
    or a relative path that now finds another file)."""
    from ..inputs.backbone_spec import backbone_settings
    recorded = pool.settings.features
    settings = ExtractSettings.from_recorded(recorded, device=device, batch_size=4)
    now = backbone_settings(settings)
    for name in ("backbone", "pretrained"):
        key = f"{name}_sha256"
        if recorded.get(key) != now.get(key):
            found = now.get(key) or "no such file"
            raise PoolError(f"{name}: {settings.__dict__[name]} is not the file the pool {pool.path.name} was made "
                            f"with (SHA-256 {str(recorded.get(key))[:12]} in the pool, {found[:12]} now); score with "
                            f"that file, or build a pool with this one")
    return settings


class DistinctParts(dict):
    """The first name of each part -> all its names; ``digests``: the first name -> the SHA-256 of
    its file as read when grouped (None: it could not be read)."""
    digests: dict[str, str | None]


def distinct_images(images: Sequence[str | Path]) -> DistinctParts:
    """Each part once: the names given, grouped by the file they are (the same file by any path, or
    identical bytes), in order of first appearance; the first name of a group stands for it."""
    groups: dict[str, list[str]] = {}
    for image in dict.fromkeys(str(i) for i in images):
        try:
            key = file_digest(image)
        except OSError:
            key = f"unreadable:{Path(image).resolve()}"  # said when it is loaded
        groups.setdefault(key, []).append(image)
    parts = DistinctParts({names[0]: names for names in groups.values()})
    parts.digests = {names[0]: None if key.startswith("unreadable:") else key for key, names in groups.items()}
    return parts


def _backbone(pool: PoolFile, device: str):
    from ..inputs.backbones import backbone_for
    settings = pool_backbone(pool, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backbone_for(settings)


def _readable(pool: PoolFile, images: Sequence[str | Path], warn: bool = True
              ) -> tuple[list[str], list, list[tuple[str, str]]]:
    """The images that can be read (and, for a tiled pool, are of its parts' size), loaded; and the
    skipped ones as (name, why), each also named in a warning (``warn``)."""
    tiling = pool.settings.tiling
    loaded, names, skipped = [], [], []
    for image in images:
        try:
            picture = load_image(image)
            if tiling is not None:
                tiling.check_size(picture, str(image), expected=f"the parts of the tiled pool {pool.path.name} have")
            loaded.append(picture)
            names.append(image)
        except UnreadableImage as error:
            skipped.append((str(image), str(error)))
        except TileSizeError as error:
            skipped.append((str(image), f"{error}; {NOT_SCORED}"))
    for _, why in skipped if warn else ():
        warnings.warn(why, stacklevel=3)
    return names, loaded, skipped


NOT_SCORED = "not scored (a tiled pool cuts parts of its runs' size only)"


def _none_scored(pool: PoolFile, skipped: list[tuple[str, str]]) -> Exception:
    """The error when no part could be scored, naming the first and why: all of another size than a
    tiled pool's, all unreadable, or some of each."""
    sized = [why for _, why in skipped if why.endswith(NOT_SCORED)]
    tiling = pool.settings.tiling
    if tiling is not None and len(sized) == len(skipped):
        return PoolError(f"score-new: none of the {len(skipped)} part(s) has the size of the tiled pool "
                         f"{pool.path.name}'s parts ({tiling.width} x {tiling.height} pixels; first: {skipped[0][0]})")
    if not sized:
        return UnreadableImage(f"score-new: none of the images could be read (first: {skipped[0][1]})")
    return PoolError(f"score-new: none of the {len(skipped)} part(s) could be scored: {len(skipped) - len(sized)} "
                     f"unreadable, {len(sized)} not of the tiled pool's size (first: {skipped[0][1]})")


def _features(backbone, pool: PoolFile, names: Sequence[str], loaded: Sequence) -> list[torch.Tensor]:
    """Per layer, the patch tokens (rows, L, C) of the parts, made as the pool's were (``forward``)."""
    tiling = pool.settings.tiling
    pictures = list(loaded) if tiling is None else list(zip(loaded, map(str, names)))
    return forward(backbone, pictures, tiling)[0]


def _scored_chunks(pool: PoolFile, names: Sequence[str], device: str, skipped: list[tuple[str, str]]):
    """(names, maps, scores) of the readable parts among ``names``, a chunk at a time
    (``PoolSettings.chunks``; a part's score does not depend on its chunk); the skipped parts, as
    (name, why), are added to ``skipped``."""
    settings, backbone = pool.settings, None
    for start, stop in settings.chunks(len(names)):
        readable, pictures, left = _readable(pool, names[start:stop], warn=False)
        skipped.extend(left)
        if not readable:
            continue
        backbone = backbone or _backbone(pool, device)
        tokens = _features(backbone, pool, readable, pictures)
        per_degree = [torch.stack([pool.score(aggregate(layer_tokens, r), r, layer)
                                   for layer, layer_tokens in enumerate(tokens)]) for r in settings.r_list]
        yield (readable, *part_maps(per_degree, settings.image_size, settings.tiling))


def score_new_images(pool_path: str | Path, images: Sequence[str | Path], out: str | Path,
                     rule: DecisionRule = DecisionRule(), device: str = "auto", day: str | None = None
                     ) -> dict[str, Any]:
    """Score each new image against the pool only, with the pool's settings (as it would score in
    one batch made of the pool and itself; the other new images never vote); decide; write
    ``scores.csv`` (path, score, decision, map_png), one map per image (``maps/<name>.npy``; a tiled
    pool's at the part's full resolution, its overlay PNG at most 1024 x 1024 pixels, as the batch's)
    and the day's record ``day.json`` (``day``, default the folder's name; the pool; each part's
    digest; see ``review``) in ``out``; the overlays share one colour scale, the day's ``map_range``.
    Parts are extracted, scored and their maps stored a chunk at a time (``PoolSettings.chunks``),
    the overlays drawn one part at a time after, all in a scratch folder: neither the parts'
    features nor their maps are all held, and the maps join ``out/maps`` together with scores.csv,
    under its lock (a failed call leaves the earlier results as they were). Returns {"rows": [...],
    "threshold", "rule", "pool_size", "maps": {path: its .npy map}, "map_range": (low, high),
    "skipped": [(path, why)], each name of a part not scored}."""
    out = output_folder(out, images)  # before any work: a folder of its own, writable
    pool = PoolFile(pool_path)
    if not len(pool):
        raise PoolError(f"{pool_path}: the pool is empty; add a scored run first (musc pool add)")
    threshold, rule_text = rule.apply(pool)
    evidence = rule.evidence(pool)
    groups = distinct_images(images)  # the same part by two names is scored once, reported for each
    stems = dict(zip(groups, map_names(list(groups))))
    (out / "maps").mkdir(parents=True, exist_ok=True)
    first_skipped: list[tuple[str, str]] = []
    names, scores, low, high = [], [], np.inf, -np.inf
    with scratch_folder(out / "maps", "pending") as pending:
        for chunk_names, maps, chunk_scores in _scored_chunks(pool, list(groups), device, first_skipped):
            for name, anomaly_map in zip(chunk_names, maps):
                np.save(pending / f"{stems[name]}.npy", anomaly_map.astype(np.float32))
            low, high = min(low, float(maps.min())), max(high, float(maps.max()))
            names += chunk_names
            scores += list(chunk_scores)
        skipped = [(alias, why.replace(name, alias, 1)) for name, why in first_skipped for alias in groups[name]]
        for _, why in skipped:
            warnings.warn(why, stacklevel=2)
        if not names:
            raise _none_scored(pool, skipped)
        high = max(high, low + 1e-12)  # one colour scale for the day's maps: a hot map reads hotter than a cool one
        verdicts = decision_words(decisions(np.asarray(scores), threshold))
        rows, by_name, kept = [], {}, []
        for name, score, verdict in zip(names, scores, verdicts):
            target = out / "maps" / f"{stems[name]}.png"
            anomaly_map = np.load(pending / f"{stems[name]}.npy")
            drawn = reduce_map(anomaly_map, evaluation_reduction(*anomaly_map.shape))  # as the batch draws a tiled map
            picture = np.asarray(load_image(name).resize(drawn.shape[::-1]))
            save_overlay(picture, drawn, pending / target.name, vmin=low, vmax=high,
                         title=f"{Path(name).name}  score {score:.4f}  {verdict}")
            kept += [(pending / target.name, target), (pending / f"{stems[name]}.npy", target.with_suffix(".npy"))]
            for alias in groups[name]:
                rows.append({"path": alias, "score": float(score), "decision": str(verdict), "map_png": str(target)})
                by_name[alias] = str(target.with_suffix(".npy"))
        write_scores(out, rows, {"day": day or out.resolve().name, "pool": str(Path(pool_path).resolve()),
                                 "pool_digest": pool.digest, "threshold": threshold, "rule": rule_text,
                                 "threshold_rule": "fixed" if rule.threshold is not None else rule.rule,
                                 **({"evidence": {k: evidence[k] for k in ("history", "defect", "good")}}
                                    if evidence else {}),
                                 "parts": {alias: groups.digests[name] for name in names for alias in groups[name]}},
                     kept)
    return {"rows": rows, "threshold": threshold, "rule": rule_text, "pool_size": len(pool), "maps": by_name,
            "map_range": (low, high), "skipped": skipped}


def output_folder(out: str | Path, images: Sequence[str | Path]) -> Path:
    """score-new's ``out``, checked before any work: never a folder holding the input images (our
    maps would be read back as parts), and writable (marked as ours, so no listing takes it)."""
    target = Path(out).resolve()
    inside = [str(i) for i in images if target == Path(i).resolve().parent or target in Path(i).resolve().parents]
    if inside:
        raise PoolError(f"out: {out} holds the input images (first: {inside[0]}); give a folder of its own")
    try:
        return mark_artifacts_root(out)
    except ArtifactError as error:
        raise PoolError(f"out: {str(error).split(': ', 1)[1]}") from None


def write_scores(out: Path, rows: list[dict], record: dict[str, Any], files: Sequence[tuple[Path, Path]] = ()
                 ) -> None:
    """scores.csv and the day's record of ``out``, under one lock, with ``files`` (source, target)
    moved into place first: the rows (and recorded parts) of an earlier call into the same folder
    stay (a part scored again gets its new row), so two calls into one ``out`` lose nothing."""
    target = out / SCORES_CSV
    with artifact_lock(target):
        for source, destination in files:
            os.replace(source, destination)
        try:
            earlier_parts = load_day_record(out).get("parts", {})
        except (OSError, ValueError):
            earlier_parts = {}
        write_day_record(out, {**record, "parts": {**earlier_parts, **record["parts"]}})
        kept = pd.DataFrame(columns=list(SCORES_CSV_COLUMNS))
        if target.is_file():
            earlier = pd.read_csv(target, dtype=str, keep_default_na=False)
            kept = earlier[~earlier["path"].isin({row["path"] for row in rows})]
        table = pd.concat([kept, pd.DataFrame(rows, columns=list(SCORES_CSV_COLUMNS))], ignore_index=True)
        with atomic_output(target) as scratch:
            table.to_csv(scratch, index=False)


def add_day_to_pool(pool_path: str | Path, folder: str | Path, max_images: int | None = None,
                    device: str = "auto", include_normal: bool = False) -> Addition:
    """Append the parts of a day's results folder that an inspector confirmed good (verdict
    ``good``, ``musc review``) to an existing pool; with ``include_normal`` also the parts decided
    normal that no inspector called a defect. Their features are extracted again from the
    image files with the pool's settings, as ``score-new`` does (a day folder keeps no features: at
    the paper's settings they are some 70 MB per part); a file changed since it was scored (its
    digest differs from the day's record) or gone is refused, naming it. The other parts are left
    out, each named: not reviewed, or confirmed defect."""
    if max_images is not None and max_images < 1:
        raise PoolError(f"max_images: must be at least 1, got {max_images}")
    day = load_day(folder)
    if not Path(pool_path).is_file():
        raise PoolError(f"{pool_path}: no such pool; a day's parts join an existing pool (musc pool add "
                        "--pool POOL RUN_FOLDER creates one)")
    pool = PoolFile(pool_path)
    good = day.joining(include_normal)
    if not good:
        raise ReviewError(f"{day.folder}: no part of {day.name} is confirmed good (musc review {day.folder} "
                          "--good NAME)" + ("" if include_normal else " or decided normal (--include-normal)"))
    recorded = day.record.get("parts", {})
    for part in good:
        if not Path(part).is_file():
            raise ReviewError(f"{part}: confirmed good on {day.name}, but the file is gone")
        if part in recorded and file_digest(part) != recorded[part]:
            raise ReviewError(f"{part}: the file changed since it was scored on {day.name}; not added")
    good, twins = _once(good)  # a part confirmed under two names joins once
    digests = [file_digest(n) for n in good]
    check_addition(pool, pool.settings, Images(good, digests, now(len(good)), None))  # already in it: said now
    for part in good:  # each part read (and sized) now: the first that cannot join is named before any work
        _, _, skipped = _readable(pool, [part], warn=False)
        if skipped:
            raise ReviewError(f"{part}: confirmed good on {day.name}, but it cannot join the pool {pool.path.name}: "
                              f"{skipped[0][1].removeprefix(f'{part}: ').removesuffix(f'; {NOT_SCORED}')}")
    verdicts = dict(zip(day.table["path"].astype(str), day.table["verdict"].astype(str)))
    sources = [f"day {day.name} (verdict good)" if verdicts.get(n) == "good" else f"day {day.name} (decided normal)"
               for n in good]
    with contextlib.ExitStack() as stack:
        try:
            folder = stack.enter_context(scratch_folder(Path(pool_path).resolve().parent, "day"))
        except OSError as error:
            raise PoolError(f"pool: cannot write the day's features beside {pool_path} ({error.strerror or error}); "
                            "a day's parts are extracted into a scratch folder there before they join") from None
        features = _DayFeatures(pool, good, device, folder)
        images = Images(good, digests, now(len(good)), features.read, features.shape, sources)
        size = _append(pool_path, pool.settings, images, max_images, {"last_day": file_digest(day.folder / SCORES_CSV)})
    left_out = [(str(row.path), f"verdict {row.verdict}" if row.verdict else f"not reviewed, decided {row.decision}"
                 if include_normal else "not reviewed") for row in day.table.itertuples()
                if str(row.path) not in good and str(row.path) not in twins]
    return Addition(len(images), size, left_out + [(name, f"the same file as {first}") for name, first in twins.items()])


def _once(parts: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Each file once: the first name of each group of names of one file (``distinct_images``), and
    the other names -> the first."""
    groups = distinct_images(parts)
    return list(groups), {name: first for first, names in groups.items() for name in names[1:]}


class _DayFeatures:
    """A day's parts' LNAMD features per degree, made as the pool's were, extracted a chunk of parts
    at a time (``PoolSettings.chunks``) into ``.npy`` files of the scratch ``folder`` (plain writes: a
    full disk is an OSError, as everywhere), read back per layer and image for the pool's writer.
    Never all held in memory."""

    def __init__(self, pool: PoolFile, parts: Sequence[str], device: str, folder: Path):
        settings, backbone = pool.settings, _backbone(pool, device)
        self.settings, self.folder, self.chunks = settings, folder, settings.chunks(len(parts))
        for start, stop in self.chunks:
            names, pictures, skipped = _readable(pool, parts[start:stop], warn=False)
            if skipped:  # changed since it was checked
                raise ReviewError(skipped[0][1])
            tokens = _features(backbone, pool, names, pictures)
            for r in settings.r_list:
                values = np.stack([aggregate(layer_tokens, r).numpy() for layer_tokens in tokens])
                np.save(self._file(r, start), values)
        self.shape = tuple(np.load(self._file(settings.r_list[0], 0), mmap_mode="r").shape[2:])

    def _file(self, r: int, start: int) -> Path:
        return self.folder / f"r{r}_{start:08d}.npy"

    def read(self, r: int, layer: int, indices: np.ndarray) -> np.ndarray:
        """The rows (layers' ``layer``) of the parts ``indices``, as ``Images.read``."""
        count, wanted, found = self.settings.tiles_per_image, np.sort(np.asarray(indices)), []
        for start, stop in self.chunks:
            inside = wanted[(wanted >= start) & (wanted < stop)] - start
            if inside.size:
                rows = (inside[:, None] * count + np.arange(count)).ravel()
                found.append(np.load(self._file(r, start), mmap_mode="r")[layer, rows])
        return np.concatenate(found)
