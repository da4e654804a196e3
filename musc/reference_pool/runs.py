"""What a scored batch run gives a pool: its images' settings and features, read from its artifacts
(the lineage its evaluate artifact records), and what a run will record, known before it runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..store import open_artifact
from .lineage import RUN_FIELDS, evaluation_in, run_lineage
from .pool import Images, PoolError, PoolSettings, now
from .scoring import read_rows
from .votes import run_votes


def planned_settings(run) -> PoolSettings:
    """What a run (``musc.stages.Run``) will record as ``run_lineage`` reads it, known before any
    work: its extract plan's recorded settings, its degrees and MSM settings, and, tiled, the size of
    its images (their first readable one's)."""
    from ..stages.extract import tiling_of
    from ..stages.graph import first_plan
    recorded = first_plan(run).key.config
    tiling = tiling_of(run.images, run.config.extract)
    return PoolSettings(str(recorded["category"]), {k: v for k, v in recorded.items() if k not in RUN_FIELDS},
                        tuple(sorted({int(r) for r in run.config.r_list})), run.config.score,
                        None if tiling is None else (tiling.height, tiling.width))


def run_model_files(run: str | Path) -> list[Path]:
    """Where a scored run's model files lay when it extracted (its extract artifact's hint)."""
    from ..inputs.backbone_spec import recorded_model_files
    extract = run_lineage(evaluation_in(run))[2]
    return recorded_model_files(extract.attrs.get("model_files"), extract.path.parent)


def run_images(run: str | Path, include_flagged: bool = False
               ) -> tuple[PoolSettings, Images, str, list[tuple[str, str]]]:
    """What a scored run would put in a pool: its settings, its images with their features (their
    source: ``run <evaluate digest[:12]>``), the run's evaluate digest, and the images left out
    with why (``(name, reason)``). A pool holds good parts only: images labelled defective (label
    1) and images the run decided anomalous are left out, unless ``include_flagged``."""
    evaluate_path = evaluation_in(run)
    evaluation = open_artifact(evaluate_path, "evaluate")
    settings, aggregates, extract, score_paths = run_lineage(evaluate_path)
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
                    [f"run {evaluation.digest[:12]}"] * int(chosen.size),
                    run_votes(score_paths, settings, len(names), chosen))
    return settings, images, evaluation.digest, left_out
