"""The MuSc graph for one category, in one function."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.futures import as_completed

from musc import progress, store
from musc.inputs.backbone_spec import check_degrees
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import Category, load_category
from musc.outputs import published
from musc.outputs.rebuild import outputs_folder, rebuild_one
from musc.progress import Job
from tasks import aggregate_task, all_tiles, classify_task, evaluate_task, extract_task, plan_score, score_task
from tasks import score_tile_task
from tasks.aggregate import plan_aggregate
from tasks.classify import plan_classify
from tasks.evaluate import plan_evaluate
from tasks.extract import plan_extract
from tasks.publish import artifact_key, publish
from tasks.stage import valid_ref

from .runners import task_runner

REPORT_FILES = ("metrics.csv", "per_image.csv", "report.md", "report.html")


@flow(name="musc-category", log_prints=True, task_runner=task_runner())
def category_flow(dataset: str, root: str, category: str, config: dict | None = None,
                  artifacts: str = "artifacts") -> dict:
    """extract -> aggregate (per r) -> score (per r, tiles) -> classify -> evaluate. Returns the
    artifact refs and the metrics (None where they could not be computed). Each stage is one
    progress job (terminal bar, Prefect progress artifact for extract and score); the metrics and
    the report are published on this run's Artifacts tab."""
    # progress.TRACKER, not TRACKER: a Dask task runner pickles this function by value, with the
    # globals it names, and a module travels by reference (the tracker holds a lock)
    cfg = MuscConfig.from_dict(config or {})
    artifacts = str(Path(artifacts).resolve())
    images = checked_category(dataset, str(Path(root).resolve()), category, cfg, artifacts)
    store.mark_artifacts_root(artifacts)  # later listings skip it, wherever it lies
    # .submit().result(): a stage that reuses its artifact ends Cached, and its future gives the reference
    with progress.TRACKER.job(category, "extract", len(images.samples), "images", dataset) as job:
        extracted = finished(job, [lambda: extract_task.submit(images, cfg.extract, artifacts)])[0]
    with progress.TRACKER.job(category, "aggregate", len(cfg.r_list), "degrees", dataset) as job:
        aggregated = finished(job, [lambda r=r: aggregate_task.submit(extracted, r) for r in cfg.r_list], counted=True)
    scores = score_degrees(aggregated, extracted, cfg, dataset)
    with progress.TRACKER.job(category, "classify", 1, "step", dataset) as job:
        classified = finished(job, [lambda: classify_task.submit(extracted, scores, list(cfg.k_list_for(dataset)))])[0]
    with progress.TRACKER.job(category, "evaluate", 1, "step", dataset) as job:
        evaluated = finished(job, [lambda: evaluate_task.submit(extracted, classified, cfg.evaluate)])[0]
    result = store.open_artifact(evaluated["path"], "evaluate", evaluated["digest"]).attrs
    outputs = str(outputs_folder(evaluated["path"]))
    if not all((Path(outputs) / name).is_file() for name in REPORT_FILES):  # deleted since: drawn again
        rebuild_one(Path(evaluated["path"]))
    refs = {"extract": extracted, "scores": scores, "classify": classified, "evaluate": evaluated}
    publish_category(dataset, category, outputs, refs, cfg.r_list)
    return {"category": category, **refs, "metrics": json.loads(result["metrics"]), "outputs": outputs}


def finished(job: Job, stages: list, counted: bool = False) -> list:
    """Submit each stage and wait for it, one at a time (a stage may need much memory); its result
    is the artifact's reference. ``counted``: each stage is one item of the job (else the task
    counts its own items). The job ends 'reused' when every stage reused its artifact (Cached)."""
    futures, results = [], []
    for submit in stages:
        futures.append(submit())
        results.append(futures[-1].result())
        if counted:
            job.advance()
    job.finish("reused" if all(f.state.name == "Cached" for f in futures) else "")
    return results


def score_degrees(aggregated: list[dict], extracted: dict, cfg: MuscConfig, dataset: str) -> list[dict]:
    """MSM of every degree: the tiles of the degrees without a valid score artifact as tasks on the
    flow's task runner (one progress job over all of them), then each degree's reduction."""
    settings = cfg.score
    todo = []
    for degree in aggregated:
        path = plan_score(degree, extracted, settings)
        if store.valid_digest(path, "score") is None:
            todo += [(degree, str(path), tile) for tile in all_tiles(extracted, settings)
                     if store.valid_digest(store.part_path(path, tile.part_name(settings.block_size))) is None]
    category = store.open_artifact(extracted["path"], "extract", extracted["digest"]).config["category"]
    with progress.TRACKER.job(category, "score", len(todo), "tiles", dataset) as job:
        for tile in as_completed([score_tile_task.submit(*item, settings) for item in todo]):
            tile.result()
            job.advance()
        refs = [score_task.submit(degree, extracted, settings).result() for degree in aggregated]
        job.finish("" if todo else "reused")
    return refs


def publish_category(dataset: str, category: str, outputs: str, refs: dict, r_list) -> None:
    """The category's metrics table (2 decimals) and its report (figures and heat-map gallery as
    small embedded PNGs, the HDF5 paths) on this run's Artifacts tab."""
    artifacts = {"extract": refs["extract"]["path"],
                 **{f"score r={r}": ref["path"] for r, ref in zip(r_list, refs["scores"])},
                 "classify": refs["classify"]["path"], "evaluate": refs["evaluate"]["path"]}
    content = published.category_content(outputs, f"{dataset} / {category}", artifacts)
    key = artifact_key(dataset, category)
    publish("table", f"{key}-metrics", content.rows, content.table_description, on_root=False)
    publish("markdown", f"{key}-report", content.markdown, f"MuSc report, {dataset} / {category}", on_root=False)



def reused_throughout(images: Category, cfg: MuscConfig, artifacts: str) -> bool:
    """Whether every stage of the category would reuse a valid artifact: the stages' plans walked
    in order, as the tasks plan them, nothing built and no model loaded."""
    extracted = valid_ref("extract", plan_extract(images, cfg.extract, artifacts))
    if extracted is None:
        return False
    scores = []
    for r in cfg.r_list:
        aggregated = valid_ref("aggregate", plan_aggregate(extracted, r))
        scores.append(aggregated and valid_ref("score", plan_score(aggregated, extracted, cfg.score)))
        if scores[-1] is None:
            return False
    classified = valid_ref("classify", plan_classify(extracted, scores, list(cfg.k_list_for(images.dataset))))
    return classified is not None and valid_ref("evaluate", plan_evaluate(extracted, classified, cfg.evaluate)) is not None


def checked_category(dataset: str, root: str, category: str, cfg: MuscConfig, artifacts: str) -> Category:
    """The category's images (never any under the artifacts root), after rejecting what would fail
    late (a degree r beyond the patch grid, too few images for MuSc, for a subset or for RsCIN's k)
    before any work."""
    check_degrees(cfg.extract, cfg.r_list, cfg.aligned_radius)
    images = load_category(dataset, root, category, exclude=[artifacts])
    images.check_size(cfg.k_list_for(dataset), cfg.divide_num, cfg.seed)
    return images
