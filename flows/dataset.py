"""A whole dataset: each category as a subflow, then the metrics table and report across them."""
from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from musc.inputs.config import MuscConfig
from musc.inputs.datasets import MASK_RULES, list_categories
from musc.outputs import figures, reports
from musc.outputs.evaluation import metrics_from_json

from .category import category_flow
from .runners import task_runner


@flow(name="musc-dataset", log_prints=True)
def dataset_flow(dataset: str, root: str, categories: list[str] | None = None, config: dict | None = None,
                 artifacts: str = "artifacts", dask: str | None = None, config_file: str | None = None) -> dict:
    """Every category (default: all found) as a subflow; ``dask``: None (local threads), "local"
    (a LocalCluster for the run) or a scheduler address for the tile tasks. ``config_file``: a YAML
    run configuration, which the fields of ``config`` override."""
    base = MuscConfig.from_yaml(config_file).to_dict() if config_file else {}
    cfg = MuscConfig.from_dict({**base, **(config or {})})
    root, artifacts = str(Path(root).resolve()), str(Path(artifacts).resolve())
    categories = categories or list_categories(dataset, root, exclude=[artifacts])
    run_category = category_flow.with_options(task_runner=task_runner(dask)) if dask else category_flow
    results = {name: run_category(dataset, root, name, cfg.to_dict(), artifacts) for name in categories}
    table = reports.metrics_table({name: metrics_from_json(r["metrics"]) for name, r in results.items()},
                                  {}, cfg.image_size, MASK_RULES[dataset])
    folder = Path(artifacts) / dataset / "_report"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "metrics.csv")
    (folder / "metrics.md").write_text(reports.table_markdown(table))
    shown = {"metrics per category": figures.save_metric_bars(table, folder / "metrics_bars.png")}
    category_reports = {name: str(Path(r["outputs"]) / "report.md") for name, r in results.items()}
    summary = reports.write_report(folder, f"MuSc results: {dataset}", table, shown, None, category_reports, None)
    publish(dataset, table, summary)
    return {"categories": results, "report": str(summary), "table": str(folder / "metrics.csv")}


def publish(dataset: str, table, summary: Path) -> None:
    """The metrics as a Prefect table artifact and the report as a markdown artifact (UI: Artifacts)."""
    key = "musc-" + "".join(c if c.isalnum() else "-" for c in dataset.lower())
    rows = table.reset_index().astype(object).where(table.reset_index().notna(), None).to_dict(orient="records")
    create_table_artifact(key=f"{key}-metrics", table=rows, description=f"MuSc metrics (x100), {dataset}")
    create_markdown_artifact(key=f"{key}-report", markdown=summary.read_text(),
                             description=f"MuSc run report: {summary}")
