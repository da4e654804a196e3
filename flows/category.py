"""The MuSc graph of one category as a Prefect flow: the stages of ``musc.stages.GRAPH`` in order,
each a task (tiled stages: a task per batch of tiles), each stage one progress job."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from musc import progress, store
from musc.inputs.backbone_spec import check_degrees
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import Category, load_category
from musc.outputs import ui_content, summary
from musc.outputs.rebuild import REPORT_FILES, rebuild_one
from musc.stages import Plan, Run, StageSpec, walk
from musc.stages.extract import tiling_of
from musc.stages.graph import PARTS_AT_ONCE
from tasks import parts_task, stage_task, tile_task
from tasks.ui import artifact_key, publish, run_source

from .names import category_run_name
from .runners import batches, in_flight, task_runner


@flow(name="musc-category", flow_run_name=category_run_name, log_prints=True, task_runner=task_runner())
def category_flow(dataset: str, root: str, category: str, config: MuscConfig | None = None,
                  artifacts: str = "artifacts", images: Category | None = None) -> dict:
    """extract -> aggregate (per r) -> score (per r, tiles) -> classify -> evaluate. Returns the
    artifact refs, the metrics (None where they could not be computed) and the decisions
    (``images``, ``flagged``, ``threshold``, ``threshold_rule``), which the run logs in one line at
    its end. Each stage is one progress job (terminal bar, Prefect progress artifact for extract and
    score); the metrics and the report are published on this run's Artifacts tab. ``images``: the
    category as already loaded and checked (the dataset flow's), else loaded here. The run is named
    by its category (``flows.names``)."""
    cfg = config if isinstance(config, MuscConfig) else MuscConfig.from_dict(config or {})
    # the work uses the folders resolved; the outputs record them as given (musc/store/naming.py)
    given, artifacts = store.naming.as_given(artifacts), str(Path(artifacts).resolve())
    if images is None:
        images = checked_category(dataset, root, category, cfg, artifacts)
    if cfg.reference:  # a pool that cannot guard this run: said before any work
        from musc.reference_pool.guard import check_reference
        check_reference(cfg.reference, [Run(images, cfg, artifacts)])
    store.mark_artifacts_root(artifacts)  # later listings skip it, wherever it lies
    run = Run(images, cfg, artifacts, given)
    with store.running(run.folder):  # musc clean waits
        refs = walk(run, lambda spec, plans: run_stage(spec, plans, images.name, images.dataset, len(images.samples)))
    evaluated = refs["evaluate"]
    evaluation = store.open_artifact(evaluated["path"], "evaluate", evaluated["digest"])
    decided = summary.outcome(evaluation)
    outputs = store.report_folder(evaluated["path"])
    if not all((outputs / name).is_file() for name in REPORT_FILES):  # deleted since: drawn again
        rebuild_one(Path(evaluated["path"]))
    guarded = guard_step(refs["guard"], evaluated, outputs) if cfg.reference else unguarded(evaluated, outputs)
    refs = {"extract": refs["extract"], "scores": refs["score"], "classify": refs["classify"], "evaluate": evaluated}
    publish_category(dataset, category, str(outputs), refs, cfg.r_list,
                     lambda path: store.naming.under_given(path, artifacts, given))
    print(summary.category_line(category, decided, outputs / store.catalog.REPORT.html))
    from prefect.runtime import flow_run
    summary.write_latest(evaluated["path"], outputs / store.catalog.REPORT.html, str(flow_run.id or ""))
    return {"category": category, **refs, "metrics": json.loads(evaluation.attrs["metrics"]), **decided,
            "outputs": str(outputs), "flow_run": str(flow_run.id or ""), **guarded}


def guard_step(guarded: dict, evaluated: dict, outputs: Path) -> dict:
    """The systematic-defect guard's marks (``--reference POOL``: the graph's guard stage scored
    every image against the pool alone) written into the report folder (per_image.csv, report.md,
    report.html redrawn when they changed), a warning naming the marked images when several are.
    Returns {"guard": its reference, "guard_marked": the names}."""
    from musc.outputs import guarding
    from musc.reference_pool.guard import read_guard
    guard = read_guard(guarded, evaluated)
    reference = guard.pool
    per_image = outputs / store.catalog.REPORT.per_image
    if guarding.write_guard(outputs, guard.record(outputs)) or "guard" not in per_image.read_text().splitlines()[0]:
        rebuild_one(Path(evaluated["path"]))
    logger = get_run_logger()
    if guard.warning:
        logger.warning(guard.warning)
    else:
        logger.info(f"guard: {len(guard.marked)} image(s) flagged by the pool {reference} and not by the batch"
                    + (f": {guard.marked[0]}" if guard.marked else ""))
    return {"guard": guard.ref, "guard_marked": guard.marked}


def unguarded(evaluated: dict, outputs: Path) -> dict:
    """A run without ``--reference`` whose report folder (shared by every run of the same
    evaluation) holds an earlier run's guard record: the record goes, the reports are redrawn
    without its marks (they tell this run)."""
    from musc.outputs import guarding
    if guarding.drop_guard(outputs):
        rebuild_one(Path(evaluated["path"]))
    return {}


def run_stage(spec: StageSpec, plans: list[Plan], name: str, dataset: str, count: int) -> list[dict]:
    """One stage as tasks, one progress job (``name`` and ``dataset`` name it; ``count``: the images
    or parts the run has): the tiles of a tiled stage first (only those without a part, gathered a
    block row at most and ``TASK_WORK`` at least into tasks on
    the flow's task runner: threads or Dask), then each plan's task, one at a time (a stage may need
    much memory); a per-part stage's plans a chunk at a time (``parts_task``). The job ends 'reused'
    when every artifact was reused."""
    # progress.TRACKER, not TRACKER: a Dask task runner pickles this function by value, with the
    # globals it names, and a module travels by reference (the tracker holds a lock)
    todo = []
    if spec.tiled:  # gathered into tasks of some work each (Prefect's cost per task stays small beside it)
        def open_tiles(plan: Plan):
            return ((plan, tile) for tile in spec.module.tiles(plan) if not spec.module.tile_done(plan, tile))
        todo = [(plan, [tile for _, tile in batch]) for plan in plans if store.valid_digest(plan.path, plan.stage) is None
                for batch in batches(open_tiles(plan), lambda item: spec.module.tile_work(*item),
                                     lambda item: (item[1].subset, item[1].first))]  # one block row at most
        total = sum(len(tiles) for _, tiles in todo)
    else:
        total = count if spec.unit in ("images", "parts") else len(plans)
    with progress.TRACKER.job(name, spec.name, total, spec.unit, dataset) as job:
        sizes = {}

        def submit(work):
            future = tile_task.submit(*work)
            sizes[id(future)] = len(work[1])
            return future
        for batch in in_flight(submit, todo):  # submitted as they can run
            batch.result()
            job.advance(sizes.pop(id(batch)))
        futures, refs = [], []
        step = PARTS_AT_ONCE if spec.per_part else 1
        for start in range(0, len(plans), step):
            chunk = plans[start:start + step]
            futures.append(parts_task.submit(chunk) if spec.per_part else stage_task.submit(chunk[0]))
            result = futures[-1].result()
            refs += result if spec.per_part else [result]
            if spec.unit in ("degrees", "step", "parts"):
                job.advance(len(chunk))
        reused = all(f.state.name == "Cached" for f in futures) and not todo
        job.finish("reused" if reused else "")
    return refs


def publish_category(dataset: str, category: str, outputs: str, refs: dict, r_list, named=str) -> None:
    """The category's metrics table (2 decimals) and its report (figures and heat-map gallery as
    small embedded PNGs, the HDF5 paths as ``named`` names them) on this run's Artifacts tab."""
    artifacts = {"extract": refs["extract"]["path"],
                 **{f"score r={r}": ref["path"] for r, ref in zip(r_list, refs["scores"])},
                 "classify": refs["classify"]["path"], "evaluate": refs["evaluate"]["path"]}
    content = ui_content.category_content(outputs, f"{dataset} / {category}", artifacts, named=named)
    key = artifact_key(run_source(), dataset, category)
    publish("table", f"{key}-metrics", content.rows, content.table_description, on_root=False)
    publish("markdown", f"{key}-report", content.markdown, f"MuSc report, {dataset} / {category}", on_root=False)


def checked_category(dataset: str, root: str, category: str, cfg: MuscConfig, artifacts: str) -> Category:
    """The category's images (never any under the artifacts root), after rejecting what would fail
    late or make no sense (a degree r beyond the patch grid, too few images for MuSc, for a subset or
    for RsCIN's k, tiles smaller than the backbone's patch grid) before any work."""
    check_degrees(cfg.extract, cfg.r_list, cfg.aligned_radius)
    images = load_category(dataset, root, category, exclude=[artifacts])
    images.check_size(cfg.k_list_for(dataset), cfg.divide_num, cfg.seed)
    tiling_of(images, cfg.extract)
    return images
