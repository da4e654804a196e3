"""A day of the line (a daily run's, or a score-new output folder's): its record, and the outputs
derived from its artifacts.

The record, ``day.json`` in the output folder, says what was seen and where its artifacts are:
the day, the pool (identity, path, digest) and its category, the artifacts root, every sighting
(a name and the part seen there: the SHA-256 of its file; one name may show several parts over a
day, a camera writing ``cam/part.png`` again and again), the parts not scored and why, and the
walk's artifacts: each part's features and pool_score artifact, the day's decide artifact.

Every path in the record and the outputs is named as ``store.catalog.named_from`` names paths, so
that a day's folder travels: the artifacts root, the pool and a daily day's images folder relative
to the results folder (absolute only where a person gave them so, outside it); a part by its path
relative to its day's folder (the daily run's folder of images; score-new's results folder); a map
relative to the results folder.

Everything else in the folder is an output drawn from the artifacts and the pool's verdict
history (``write_views``, rebuilt by ``musc report DAY`` and after each review): ``scores.csv``
(one row per sighting: path, part, score, decision, verdict, map_png), the overlays in ``maps/``
(on the day's one colour scale) and, for a daily run's day, ``report.md``/``report.html`` and
``trend.png``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..outputs.evaluation import ANOMALOUS, decision_words
from ..store import ArtifactError, atomic_output, atomic_write_text, open_artifact
from ..store.catalog import DAY, derived_name, leftover_writes
from ..store.naming import named_from, named_in
from .errors import PoolError
from .verdicts import standing, verdict_history_path

DAY_RECORD, SCORES_CSV, MAPS = DAY.record, DAY.scores, DAY.maps
SCORES_COLUMNS = ("path", "part", "score", "decision", "verdict", "map_png")
RECORD_FORMAT = 3  # 3: every path named relative (store.catalog.named_from)
OVERLAY_KEY = "musc-overlay"  # PNG text: what an overlay was drawn from (drawn again only when it changes)


class DayError(PoolError):
    """A day's folder refused: one line naming the folder, file or part; nothing was written."""


@dataclass
class DayRecord:
    folder: Path
    day: str
    pool: dict[str, str]                                   # id, path (named_from the folder), digest (as last scored)
    category: str
    artifacts: str                                         # the artifacts root, named_from the folder
    seen: list[dict[str, str]] = field(default_factory=list)        # {"name", "part"}, in order
    not_scored: list[dict[str, str]] = field(default_factory=list)  # {"name", "why"}
    decide: str | None = None                              # relative to the artifacts root
    parts: dict[str, dict[str, str]] = field(default_factory=dict)  # part -> {"features", "pool_score"}
    daily: bool = False                                    # a daily run's day: report and trend too
    source: str = ""                                       # a daily run's day: the folder of its images

    @property
    def root(self) -> Path:
        """The artifacts root."""
        return named_in(self.artifacts, self.folder)

    @property
    def pool_file(self) -> Path:
        """The pool the day was scored against."""
        return named_in(self.pool["path"], self.folder)

    @property
    def source_folder(self) -> Path | None:
        """A daily run's folder of the day's images."""
        return named_in(self.source, self.folder) if self.source else None

    @property
    def parts_folder(self) -> Path:
        """The folder a part's name is relative to: a daily run's folder of images, else the results folder."""
        return self.source_folder or self.folder

    def name_of(self, path: str | Path) -> str:
        """A part's name in the record and the outputs: its file relative to its day's folder."""
        return named_from(path, self.parts_folder)

    def file_of(self, name: str) -> Path:
        """The file a part's name names (absolute, for reading from any working directory)."""
        return Path(os.path.abspath(named_in(name, self.parts_folder)))

    def see(self, name: str, part: str) -> None:
        if {"name": name, "part": part} not in self.seen:
            self.seen.append({"name": name, "part": part})

    def to_json(self) -> str:
        values = {key: value for key, value in asdict(self).items() if key != "folder"}
        return json.dumps({"format": RECORD_FORMAT, **values}, indent=1, sort_keys=True) + "\n"

    def save(self) -> None:
        atomic_write_text(self.folder / DAY_RECORD, self.to_json())

    @classmethod
    def load(cls, folder: str | Path) -> "DayRecord | None":
        """The record of a day's folder; None where there is none; DayError naming the file when it
        is not one of ours (or one of an earlier version)."""
        folder = Path(folder)
        path = folder / DAY_RECORD
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise DayError(f"{path}: not a day's record ({str(error).splitlines()[0][:100]})") from None
        if not isinstance(values, dict) or values.get("format") != RECORD_FORMAT:
            raise DayError(f"{path}: a day's record of an earlier version of musc-flow (or not one); score the "
                           "day again into a new folder (musc score-new --out, or the daily flow's out)")
        try:
            values.pop("format")
            return cls(folder=folder, **values)
        except TypeError as error:
            raise DayError(f"{path}: not a day's record ({error})") from None


@dataclass
class DayView:
    """What a day's outputs show, read from its artifacts: one row per sighting of a scored part
    (path, part, score, decision, verdict, map_png), the threshold and its rule, the pool's size,
    the day's colour scale, and the sightings not scored (name, why)."""
    record: DayRecord
    rows: list[dict[str, Any]]
    threshold: float
    rule: str
    rule_name: str
    pool_size: int
    map_range: tuple[float, float]
    skipped: list[tuple[str, str]]
    evidence: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        from .daily import day_summary
        return day_summary(self.record.day, self.scored_rows(), self.threshold, self.pool_size)

    def scored_rows(self) -> list[dict[str, Any]]:
        """One row per part (the first name it was seen under): what the day's counts count."""
        first: dict[str, dict] = {}
        for row in self.rows:
            first.setdefault(row["part"], row)
        return list(first.values())


def view(record: DayRecord) -> DayView:
    """The day as its artifacts and the pool's verdict history say now."""
    if record.decide is None:
        raise DayError(f"{record.folder}: none of the day's parts could be scored")
    decided = open_artifact(record.root / record.decide, "decide")
    parts = [str(p) for p in decided.read("parts")]
    scores = np.asarray(decided.read("scores"), dtype=np.float64)
    words = decision_words(np.asarray(decided.read("decisions")) == 1)
    by_part = {part: (float(score), str(word)) for part, score, word in zip(parts, scores, words)}
    verdicts = standing(verdict_history_path(record.pool_file), record.pool["id"])
    verdict_of = dict(zip(verdicts["part"], verdicts["verdict"]))
    rows = []
    for sighting in record.seen:
        part = sighting["part"]
        if part not in by_part:
            continue
        score, decision = by_part[part]
        overlay = f"{MAPS}/{overlay_name(sighting['name'], part)}"  # named from the results folder
        rows.append({"path": sighting["name"], "part": part, "score": score, "decision": decision,
                     "verdict": verdict_of.get(part, ""), "map_png": overlay,
                     # not in scores.csv: the files themselves, from any working directory
                     "file": record.file_of(sighting["name"]),
                     "map_file": Path(os.path.abspath(named_in(overlay, record.folder)))})
    low, high = (float(v) for v in json.loads(decided.attrs["map_range"]))
    evidence = json.loads(decided.attrs["evidence"]) if "evidence" in decided.attrs else None
    return DayView(record, rows, float(decided.attrs["threshold"]), str(decided.attrs["threshold_rule"]),
                   "fixed" if decided.config.get("threshold") is not None else str(decided.config.get("rule")),
                   int(decided.attrs["pool_size"]), (low, high),
                   [(item["name"], item["why"]) for item in record.not_scored], evidence)


def overlay_name(name: str, part: str) -> str:
    """The overlay of a part seen under a name: the one naming rule of derived files, with the part's
    identity (two parts seen at one path get two overlays)."""
    readable = "/".join(p for p in Path(name).parts if p not in ("..", "/"))  # the identity tells them apart
    return derived_name(readable, identity=f"{name}\0{part}")


def write_views(day: DayView) -> None:
    """The day's outputs from its artifacts: overlays (drawn where what they show changed),
    scores.csv, and, for a daily run's day, its report and trend. Called under the day's lock: what
    a killed writer left (temporary files) goes first."""
    for folder in (day.record.folder, day.record.folder / MAPS):
        for leftover in leftover_writes(folder):
            leftover.unlink(missing_ok=True)
    _draw_overlays(day)
    table = pd.DataFrame([{column: row[column] for column in SCORES_COLUMNS} for row in day.rows],
                         columns=list(SCORES_COLUMNS))
    with atomic_output(day.record.folder / SCORES_CSV) as scratch:
        table.to_csv(scratch, index=False)
    if day.record.daily:
        from .daily import write_day_outputs
        write_day_outputs(day)


def _draw_overlays(day: DayView) -> None:
    from PIL import Image

    from ..outputs.evaluation import reduce_map, evaluation_reduction
    from ..outputs.figures import save_overlay
    folder = day.record.folder / MAPS
    folder.mkdir(exist_ok=True)
    low, high = day.map_range
    for row in day.rows:
        artifacts = day.record.parts[row["part"]]
        signature = json.dumps([artifacts["pool_score"], artifacts["features"], low, high, row["score"],
                                row["decision"], Path(row["path"]).name])
        target = row["map_file"]
        try:
            with Image.open(target) as drawn:
                if drawn.info.get(OVERLAY_KEY) == signature:
                    continue
        except (OSError, ValueError, SyntaxError):
            pass
        scored = open_artifact(day.record.root / artifacts["pool_score"], "pool_score")
        features = open_artifact(day.record.root / artifacts["features"], "features")
        anomaly_map = np.asarray(scored.read("map"), dtype=np.float64)
        drawn = reduce_map(anomaly_map, evaluation_reduction(*anomaly_map.shape))  # as the batch draws a tiled map
        save_overlay(features.read("picture"), drawn, target, vmin=low, vmax=high,
                     title=f"{Path(row['path']).name}  score {row['score']:.4f}  {row['decision']}",
                     meta={OVERLAY_KEY: signature})


def part_map(record: DayRecord, part: str) -> np.ndarray:
    """A part's anomaly map (its pool_score artifact's)."""
    try:
        artifacts = record.parts[part]
    except KeyError:
        raise DayError(f"{record.folder}: no part {part[:12]} was scored on {record.day}") from None
    return open_artifact(record.root / artifacts["pool_score"], "pool_score").read("map")


def flagged(rows) -> list[dict[str, Any]]:
    """The rows decided anomalous, highest score first."""
    return sorted((row for row in rows if row["decision"] == ANOMALOUS), key=lambda row: -row["score"])


def load_day(folder: str | Path) -> DayRecord:
    """The record of a day's results folder; DayError (one line) when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DayError(f"{folder}: no such day folder")
    record = DayRecord.load(folder)
    if record is None:
        raise DayError(f"{folder}: no {DAY_RECORD} here (give the folder musc score-new or the daily flow wrote a "
                       "day's results to)")
    return record


__all__ = ["ArtifactError", "DAY_RECORD", "DayError", "DayRecord", "DayView", "SCORES_CSV", "flagged", "load_day",
           "overlay_name", "part_map", "view", "write_views"]
