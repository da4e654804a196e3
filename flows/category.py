"""The MuSc graph for one category, in one function."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from musc import store
from musc.inputs.backbones import check_degrees
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import Category, load_category
from musc.outputs.rebuild import outputs_folder
from tasks import aggregate_task, all_tiles, classify_task, evaluate_task, extract_task, plan_score, score_task
from tasks import score_tile_task

from .runners import task_runner


@flow(name="musc-category", log_prints=True, task_runner=task_runner())
def category_flow(dataset: str, root: str, category: str, config: dict | None = None,
                  artifacts: str = "artifacts") -> dict:
    """extract -> (aggregate -> score) per r -> classify -> evaluate. Returns the artifact refs and
    the metrics (None where they could not be computed)."""
    cfg = MuscConfig.from_dict(config or {})
    artifacts = str(Path(artifacts).resolve())
    images = checked_category(dataset, str(Path(root).resolve()), category, cfg, artifacts)
    store.mark_artifacts_root(artifacts)  # later listings skip it, wherever it lies
    # .submit().result(): a stage that reuses its artifact ends Cached, and its future gives the reference
    extracted = extract_task.submit(images, cfg.extract, artifacts).result()
    scores = [score_degree(aggregate_task.submit(extracted, r).result(), extracted, cfg) for r in cfg.r_list]
    classified = classify_task.submit(extracted, scores, list(cfg.k_list_for(dataset))).result()
    evaluated = evaluate_task.submit(extracted, classified, cfg.evaluate).result()
    result = store.open_artifact(evaluated["path"], "evaluate", evaluated["digest"]).attrs
    return {"category": category, "extract": extracted, "scores": scores, "classify": classified,
            "evaluate": evaluated, "metrics": json.loads(result["metrics"]),
            "outputs": str(outputs_folder(evaluated["path"]))}


def score_degree(aggregated: dict, extracted: dict, cfg: MuscConfig) -> dict:
    """MSM of one degree: its tiles as tasks on the flow's task runner, then the reduction."""
    settings = cfg.score
    path = plan_score(aggregated, extracted, settings)
    if store.valid_digest(path, "score") is None:
        tiles = [score_tile_task.submit(aggregated, str(path), tile, settings) for tile in all_tiles(extracted, settings)]
        for tile in tiles:
            tile.result()
    return score_task.submit(aggregated, extracted, settings).result()


def checked_category(dataset: str, root: str, category: str, cfg: MuscConfig, artifacts: str) -> Category:
    """The category's images (never any under the artifacts root), after rejecting what would fail
    late (a degree r beyond the patch grid, too few images for MuSc, for a subset or for RsCIN's k)
    before any work."""
    check_degrees(cfg.extract, cfg.r_list)
    images = load_category(dataset, root, category, exclude=[artifacts])
    images.check_size(cfg.k_list_for(dataset), cfg.divide_num, cfg.seed)
    return images
