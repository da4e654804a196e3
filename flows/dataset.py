"""A whole dataset: each category as a subflow, then the metrics table and report across them."""
from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow
from prefect.settings import temporary_settings

from musc.inputs.config import MuscConfig
from musc.inputs.datasets import Category, list_categories
from musc.inputs.layouts.registry import layout
from musc.outputs import ui_content, reports, summary
from musc.stages import Run, reused_throughout
from musc.store import catalog, naming
from tasks.ui import artifact_key, publish, run_source, ui_link

from .category import category_flow, checked_category
from .names import dataset_run_name
from .runners import task_runner


@flow(name="musc-dataset", flow_run_name=dataset_run_name, log_prints=True)
def dataset_flow(dataset: str, root: str, categories: list[str | Category] | None = None,
                 config: MuscConfig | None = None, artifacts: str = "artifacts", dask: str | None = None,
                 config_file: str | None = None) -> dict:
    """Every category (default: all found) as a subflow; ``categories``: names, or the categories
    as the command line already loaded and checked them (each category is loaded once per
    command). ``dask``: None (local threads), "local" (a LocalCluster for the run) or a scheduler
    address for the tile tasks. ``config_file``: a YAML run configuration, which the fields of
    ``config`` override. The run logs a one-line summary at its end (``summary`` of the result).

    Args:
        dataset: The layout of the dataset: mvtec_ad, visa, btad, folder, mvtec_ad2, mvtec_loco, mpdd,
            real_iad, kolektor or autovi.
        root: The dataset's folder, as the worker's machine sees it.
        categories: The categories to score; empty: every category found.
        config: The MuSc settings (each field explained); empty fields keep the paper's defaults.
        artifacts: The folder the artifacts, reports and error log are written to.
        dask: Where the score tiles run: empty for local threads, local for a Dask cluster of this
            run, or a scheduler address (tcp://host:8786).
        config_file: A YAML file of settings, which the fields of config override.
    """
    cfg = load_config(config, config_file)
    # the work uses the artifacts folder resolved; the outputs record it, and the root, as given
    # (musc/store/naming.py)
    given, artifacts = naming.as_given(artifacts), str(Path(artifacts).resolve())
    loaded = [item if isinstance(item, Category) else checked_category(dataset, root, item, cfg, artifacts)
              for item in (categories or list_categories(dataset, root, exclude=[artifacts]))]
    run_category = category_flow.with_options(task_runner=task_runner(dask)) if dask else category_flow
    results = {}
    for images in loaded:
        with _heartbeats_unless_reused(Run(images, cfg, artifacts, given)):
            results[images.name] = run_category(dataset, root, images.name, cfg, given, images)
    folder = catalog.dataset_report_folder(artifacts, dataset)
    table, index = reports.dataset_report(folder, dataset, {name: r["metrics"] for name, r in results.items()},
                                          {name: r["outputs"] for name, r in results.items()}, cfg.image_size,
                                          layout(dataset).mask_rule)
    publish_dataset(dataset, folder, table, results, lambda path: naming.under_given(path, artifacts, given))
    line = summary.dataset_line(dataset, results, index)
    print(line)
    return {"categories": results, "report": str(index), "table": str(folder / catalog.REPORT.metrics), "summary": line}


# The nightly deployments' flow (prefect.yaml): a run that fails (a GPU error, a full disk, the data
# share away for a while) is tried again by its own process, twice, 5 minutes apart; each try reuses
# every stage the earlier ones finished. A run whose process or machine died cannot retry itself: the
# automation of configs/automation-crashed.yaml marks it Crashed, and `prefect flow-run retry` runs it
# again (docs/OPERATIONS.md, "Crashed machines").
nightly_dataset_flow = dataset_flow.with_options(retries=2, retry_delay_seconds=300)


def load_config(config: MuscConfig | dict | None, config_file: str | None) -> MuscConfig:
    """The run's configuration: ``config`` (an object, or a dict of fields) over the YAML file's."""
    if isinstance(config, MuscConfig) and not config_file:
        return config
    base = MuscConfig.from_yaml(config_file).to_dict() if config_file else {}
    given = config.to_dict() if isinstance(config, MuscConfig) else dict(config or {})
    return MuscConfig.from_dict({**base, **given})


@contextlib.contextmanager
def _heartbeats_unless_reused(run: Run):
    """A category run that only reuses its artifacts sends no flow-run heartbeats. Heartbeats let a
    server mark a crashed long run; a run that ends within a second needs none, and Prefect makes
    each flow run's end wait up to 1 s for its heartbeat thread (a second per category on every
    cached rerun). Runs that compute keep Prefect's heartbeats."""
    try:
        quiet = reused_throughout(run)
    except Exception:  # noqa: BLE001 - the category run itself reports what is wrong
        quiet = False
    with temporary_settings(updates={"flows.heartbeat_frequency": None}) if quiet else contextlib.nullcontext():
        yield


def publish_dataset(dataset: str, folder: Path, table, results: dict, named=str) -> None:
    """The metrics table (2 decimals) and the run's report (figures and galleries embedded as small
    PNGs, the HDF5 paths as ``named`` names them) on the run the user started (``musc demo``,
    ``musc run``, a deployment's run), so they are on its Artifacts tab even when this flow is a
    subflow."""
    artifacts = {name: {"extract": r["extract"]["path"], "classify": r["classify"]["path"],
                        "evaluate": r["evaluate"]["path"]} for name, r in results.items()}
    source = run_source()  # the deployment (or the demo): each keeps its own history
    links = {name: {"its report in the UI": ui_link(f"/artifacts/key/{artifact_key(source, dataset, name)}-report"),
                    **({"its run": ui_link(f"/runs/flow-run/{r['flow_run']}")} if r.get("flow_run") else {})}
             for name, r in results.items()}
    content = ui_content.dataset_content(folder, dataset, table, {n: r["outputs"] for n, r in results.items()},
                                        artifacts, links=links, named=named)
    key = artifact_key(source, dataset)
    publish("table", f"{key}-metrics", content.rows, content.table_description)
    publish("markdown", f"{key}-report", content.markdown,
            f"MuSc run report, {dataset}: {named(folder / catalog.REPORT.index)}")
