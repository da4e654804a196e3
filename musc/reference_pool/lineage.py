"""What a scored batch run was made and scored with, read from its artifacts (the lineage its
evaluate artifact records): the pool and the guard read a run so."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..inputs.config import ScoreSettings
from ..outputs.rebuild import inputs_of
from ..store import ArtifactError, catalog, open_artifact
from .pool import PoolSettings

RUN_FIELDS = ("dataset", "category")  # what the extract config says of the run, not of the features


def evaluation_in(path: str | Path) -> Path:
    """An evaluate artifact, or the newest one under a category folder."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(catalog.category_artifacts(path, "evaluate"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ArtifactError(f"{path}: no evaluate artifact here (give a category folder of a run, or the .h5)")
    return candidates[-1]


class Lineage(NamedTuple):
    settings: PoolSettings        # what the run's images were made and scored with, as a pool records it
    aggregates: dict[int, Path]   # its aggregate artifact per degree r
    extract: Any                  # its extract artifact (opened)
    scores: dict[int, Path]       # its score artifact per degree r


def run_lineage(run: str | Path) -> Lineage:
    """What a scored run's images were made and scored with (as a pool records it), its aggregate
    and score artifacts per degree r, and its extract artifact."""
    evaluate_path = evaluation_in(run)
    classify_path = inputs_of(evaluate_path, "classify")[0]
    extract = open_artifact(inputs_of(evaluate_path, "extract")[0], "extract")
    aggregates, scores, scoring = {}, {}, None
    for score_path in inputs_of(classify_path, "score"):
        scoring = ScoreSettings.from_recorded(open_artifact(score_path, "score").config)
        aggregate_path = inputs_of(score_path, "aggregate")[0]
        r = int(open_artifact(aggregate_path, "aggregate").config["r"])
        aggregates[r], scores[r] = aggregate_path, score_path
    tiled = extract.config.get("tiles") is not None  # a tiled run's masks are at its parts' full resolution
    settings = PoolSettings(str(extract.config["category"]),
                            {k: v for k, v in extract.config.items() if k not in RUN_FIELDS},
                            tuple(sorted(aggregates)), scoring,
                            tuple(int(n) for n in extract.shape("masks")[1:]) if tiled else None)
    return Lineage(settings, aggregates, extract, scores)
