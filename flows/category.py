"""The MuSc graph for one category, in one function."""
from __future__ import annotations

import json
import math
from pathlib import Path

from prefect import flow

from musc import MuscConfig
from musc.config import ConfigError
from musc.data import load_category
from musc.store import open_artifact, valid_digest
from tasks import (aggregate_task, all_tiles, classify_task, evaluate_task, extract_task, plan_score, score_task,
                   score_tile_task)

from .runners import task_runner


@flow(name="musc-category", log_prints=True, task_runner=task_runner())
def category_flow(dataset: str, root: str, category: str, config: dict | None = None,
                  artifacts: str = "artifacts") -> dict:
    """extract -> (aggregate -> score) per r -> classify -> evaluate. Returns the artifact refs and
    the metrics (None where they could not be computed)."""
    cfg = MuscConfig.from_dict(config or {})
    config = cfg.to_dict()
    root, artifacts = str(Path(root).resolve()), str(Path(artifacts).resolve())
    check_inputs(dataset, root, category, cfg)
    extracted = extract_task(dataset, root, category, config, artifacts)
    scores = [score_degree(aggregate_task(extracted, r), extracted, cfg) for r in cfg.r_list]
    classified = classify_task(extracted, scores, list(cfg.k_list_for(dataset)))
    evaluated = evaluate_task(extracted, classified, cfg.threshold, cfg.overlay_normalisation, cfg.pixel_threshold)
    result = open_artifact(evaluated["path"], "evaluate", evaluated["digest"]).attrs
    return {"category": category, "extract": extracted, "scores": scores, "classify": classified,
            "evaluate": evaluated, "metrics": _metrics(result["metrics"]), "outputs": result["outputs"]}


def score_degree(aggregated: dict, extracted: dict, cfg: MuscConfig) -> dict:
    """MSM of one degree: its tiles as tasks on the flow's task runner, then the reduction."""
    stage = (aggregated, extracted, cfg.topmin_min, cfg.topmin_max, cfg.divide_num, cfg.seed, cfg.block_size)
    if valid_digest(plan_score(*stage, cfg.device, cfg.aligned_radius), "score") is None:
        tiles = [score_tile_task.submit(*stage, *tile, cfg.device, cfg.aligned_radius, cfg.msm_precision)
                 for tile in all_tiles(extracted, cfg.divide_num, cfg.seed, cfg.block_size)]
        for tile in tiles:
            tile.result()
    return score_task(*stage, cfg.device, cfg.aligned_radius, cfg.msm_precision)


def check_inputs(dataset: str, root: str, category: str, cfg: MuscConfig) -> None:
    """Reject what would fail late (too few images for MuSc or for RsCIN's k) before any work."""
    n_images = len(load_category(dataset, root, category).samples)
    if n_images < 2:
        raise ConfigError(f"category {category!r}: {n_images} image(s); MuSc needs at least 2")
    too_large = [k for k in cfg.k_list_for(dataset) if k > n_images]
    if too_large:
        raise ConfigError(f"k_list: window size {too_large[0]} is larger than the {n_images} images of {category!r}")


def _metrics(stored: str) -> dict:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            for k, v in json.loads(stored).items()}
