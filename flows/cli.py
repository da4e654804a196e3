"""The ``musc`` command: launches the flows, inspects artifacts, rebuilds reports, runs the pool.

Errors in the input (configuration, dataset, artifact) print one line naming the field or file
and exit with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from musc.inputs.config import ConfigError, MuscConfig
from musc.inputs.datasets import DATASETS, DatasetError, UnreadableImage
from musc.method.metrics import METRIC_NAMES
from musc.store import ArtifactError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="MuSc zero-shot anomaly detection as a Prefect workflow with HDF5 artifacts.")
console = Console(stderr=True)
USER_ERRORS = (ConfigError, DatasetError, ArtifactError, UnreadableImage, FileNotFoundError)
state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    state["debug"] = debug


def _prefect_environment() -> None:
    """Serverless (ephemeral) Prefect unless PREFECT_API_URL names a server; no telemetry."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # the temporary server can take longer than Prefect's 20 s to start on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class _TracebacksToFile(logging.Filter):
    """Keep tracebacks off the terminal: the full record goes to a log file, the console gets the
    one-line message (``--debug`` leaves the console as it is)."""

    def __init__(self, log_file: Path):
        super().__init__()
        self.log_file = log_file
        self.handler: logging.Handler | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            if self.handler is None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                self.handler = logging.FileHandler(self.log_file)
                self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self.handler.handle(record)
            record.msg = f"{record.getMessage().splitlines()[0]} (traceback in {self.log_file})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _route_tracebacks(log_file: Path) -> None:
    if state["debug"]:
        return
    from prefect.logging.configuration import setup_logging
    setup_logging()  # Prefect's console handlers exist from here on (later set-ups are incremental)
    trap = _TracebacksToFile(log_file.resolve())
    for logger in (logging.getLogger(), logging.getLogger("prefect._internal")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(trap)


def _fail(error: BaseException) -> None:
    if state["debug"]:
        raise error
    console.print(f"[bold red]error:[/] {_first_line(error) or type(error).__name__}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def _run_guarded(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as error:
        _fail(error)
    except Exception as error:  # noqa: BLE001 - unexpected: one line, traceback with --debug
        if state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {type(error).__name__}: {_first_line(error)}"
                      " (rerun with --debug for the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _int_list(value: Optional[str], field: str) -> Optional[List[int]]:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{field}: expected comma-separated integers, got {value!r}") from None


def _print_metrics(result: dict) -> None:
    table = Table(title="MuSc metrics (x100)")
    names = [name for name in METRIC_NAMES if name != "pixel_aupro_mvtec"]  # the reference's seven
    table.add_column("category", no_wrap=True, min_width=8)
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    for category, outcome in result["categories"].items():
        metrics = outcome["metrics"]
        table.add_row(category, *("n/a" if metrics.get(n) is None else f"{metrics[n] * 100:.2f}" for n in names))
    Console().print(table)
    Console().print(f"report: {result['report']}")


@app.command()
def demo(data: Path = typer.Option(Path("demo_data"), help="Where the synthetic dataset is generated."),
         artifacts: Path = typer.Option(Path("artifacts"), help="Artifact root."),
         seed: int = typer.Option(0, help="Seed of the generated dataset.")) -> None:
    """Generate a small synthetic MVTec-style dataset and run the whole flow on it, offline."""
    _prefect_environment()
    warnings.filterwarnings("ignore", message="pretrained=none")

    def go():
        _route_tracebacks(artifacts / "musc-errors.log")
        from .demo import demo_flow
        return demo_flow(str(data), str(artifacts), seed)
    _print_metrics(_run_guarded(go))


# musc run: every configuration field has a flag; one table says which, so adding a field is one line.
RUN_FLAGS = (  # (configuration field, value type, help)
    ("backbone", str, "open_clip model name, JSON config, or timm:<name>."),
    ("pretrained", str, "open_clip tag, checkpoint file, or none."),
    ("image_size", int, "Image size S (a multiple of the patch size)."),
    ("layers", "ints", "0-based blocks, e.g. 5,11,17,23."),
    ("r_list", "ints", "Aggregation degrees, e.g. 1,3,5."),
    ("k_list", "ints", "RsCIN window sizes; default per dataset."),
    ("device", str, "auto, cpu or cuda."),
    ("msm_precision", str, "fp32; bf16: screened in bf16, the same scores; bf16-fast: bf16 only, not exact."),
)


def _with_run_options(fn):
    """Give ``fn(**options)`` the signature typer reads: the fixed options plus one per RUN_FLAGS row."""
    fixed = [
        ("dataset", str, typer.Option(..., help=f"Dataset layout: {', '.join(DATASETS)}.")),
        ("root", Path, typer.Option(..., help="Dataset root folder.")),
        ("category", Optional[List[str]], typer.Option(None, help="Category (repeat for several); default all.")),
    ]
    flags = [(field, Optional[int if kind is int else str], typer.Option(None, help=text))
             for field, kind, text in RUN_FLAGS]
    rest = [
        ("artifacts", Path, typer.Option(Path("artifacts"), help="Artifact root.")),
        ("config", Optional[Path], typer.Option(None, help="YAML run configuration (flags override it).")),
        ("dask", Optional[str], typer.Option(None, help="Run MSM tiles on Dask: 'local' or tcp://host:8786.")),
    ]
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                  for name, kind, default in fixed + flags + rest]
    fn.__signature__ = inspect.Signature(parameters, return_annotation=None)
    fn.__annotations__ = {p.name: p.annotation for p in parameters}
    return fn


@app.command("run")
@_with_run_options
def run(**options) -> None:
    """Score a dataset: extract, aggregate, score, classify, evaluate; reuses what is already done."""
    _prefect_environment()
    dataset, root, artifacts = options["dataset"], options["root"], options["artifacts"]

    def go():
        from musc.inputs.datasets import list_categories
        chosen = list(options["category"] or []) or list_categories(dataset, root)
        if not chosen:
            raise DatasetError(f"root: no {dataset} categories found under {root}")
        cfg = MuscConfig.from_yaml(options["config"]) if options["config"] else MuscConfig()
        overrides = {field: _int_list(options[field], field) if kind == "ints" else options[field]
                     for field, kind, _ in RUN_FLAGS}
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
        from .category import checked_category
        from .dataset import dataset_flow
        try:
            categories = [checked_category(dataset, str(root), name, cfg) for name in chosen]
        except Exception:
            _preflight(cfg, None, artifacts)  # a bad configuration is reported before a bad dataset
            raise
        _preflight(cfg, categories, artifacts)
        _route_tracebacks(artifacts / "musc-errors.log")
        return dataset_flow(dataset, str(root), chosen, cfg.to_dict(), str(artifacts), options["dask"])
    _print_metrics(_run_guarded(go))


def _preflight(cfg: MuscConfig, categories: list | None, artifacts: Path) -> None:
    """Reject a bad backbone configuration before any work starts (the field is named); say early
    when the bf16 screen cannot be built (MSM then runs in fp32, with the same scores).

    The backbone is built only when some category still needs extracting: a valid extract artifact
    for every category (planned from the settings and the image digests, no model) proves the
    configuration already worked, and a cached rerun then never loads torch or open_clip.
    ``categories`` None: not known (the backbone is built)."""
    from musc import store
    from tasks.extract import plan_extract
    root = str(artifacts.resolve())
    if categories is None or any(store.valid_digest(plan_extract(c, cfg.extract, root), "extract") is None
                                 for c in categories):
        from musc.inputs.backbones import backbone_for
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone_for(cfg.extract)
    if cfg.msm_precision == "bf16":
        from musc.method.screening import ScreeningUnavailable, kernels
        try:
            kernels()
        except ScreeningUnavailable as error:
            console.print(f"warning: {error}; MSM runs in fp32 (the same scores)", highlight=False)


@app.command()
def inspect(path: Path = typer.Argument(..., help="An artifact (.h5)."),
            top: int = typer.Option(5, help="For evaluate artifacts: how many most anomalous images to list.")) -> None:
    """What an artifact holds: stage, config, provenance, datasets; metrics for evaluate artifacts."""
    from musc.store import describe, open_artifact

    def go():
        if not path.is_file():
            raise ArtifactError(f"{path}: no such artifact")
        info = describe(path)
        out = Console()
        attrs = info["attrs"]
        out.print(f"[bold]{path}[/]  stage: {attrs.get('stage')}  ({info['status']})")
        out.print(f"digest: {info['digest']}  code: {attrs.get('code_version')}  created: {attrs.get('created')}")
        out.print("config: " + json.dumps(attrs.get("config"), sort_keys=True))
        out.print("inputs: " + json.dumps(attrs.get("inputs"), sort_keys=True)[:400])
        table = Table("dataset", "shape dtype", "meaning")
        for name, shape in info["datasets"].items():
            table.add_row(name, shape, info["meanings"].get(name, ""))
        out.print(table)
        if attrs.get("stage") == "evaluate" and info["digest"]:
            artifact = open_artifact(path, "evaluate")
            metrics = json.loads(attrs["metrics"])
            out.print("metrics (x100): " + ", ".join(
                f"{k} {'n/a' if v is None else f'{v * 100:.2f}'}" for k, v in metrics.items()))
            out.print(f"threshold: {attrs['threshold']:.6g} ({attrs['threshold_rule']})")
            from musc.outputs.rebuild import input_path
            names = open_artifact(input_path(path, "extract")).read("names")
            import pandas as pd
            per_image = pd.read_csv(Path(attrs["outputs"]) / "per_image.csv")
            ranking = artifact.read("ranking")[:top]
            out.print(f"top {len(ranking)} most anomalous:")
            for rank, index in enumerate(ranking, start=1):
                row = per_image.iloc[int(index)]
                out.print(f"  {rank}. {names[index]}  score {row['score_rscin']:.4f}  {row['decision']}")
    _run_guarded(go)


@app.command("report")
def report_command(path: Path = typer.Argument(..., help="An evaluate artifact, or a folder holding them.")) -> None:
    """Rebuild figures and reports from artifacts alone, without recomputing any stage."""
    def go():
        from musc.outputs.rebuild import rebuild_reports
        for written in rebuild_reports(path):
            Console().print(f"report: {written}")
    _run_guarded(go)


pool_app = typer.Typer(help="A reference pool of earlier images, for scoring new images one at a time.")
app.add_typer(pool_app, name="pool")


@pool_app.command("add")
def pool_add(pool: Path = typer.Option(..., help="The pool file (.h5); created if missing."),
             run: Path = typer.Argument(..., help="A category folder of a run (artifacts/<dataset>/<category>) "
                                                  "or its evaluate artifact."),
             include_anomalous: bool = typer.Option(False, help="Also add images judged anomalous."),
             max_images: int = typer.Option(200, help="Pool size bound; the oldest images leave first.")) -> None:
    """Add the LNAMD features of a scored batch to the pool."""
    def go():
        from musc.reference_pool import add_run_to_pool
        added, size = add_run_to_pool(pool, run, include_anomalous, max_images)
        Console().print(f"added {added} image(s); the pool holds {size}: {pool}")
    _run_guarded(go)


@app.command("score-new")
def score_new(pool: Path = typer.Option(..., help="The pool file (musc pool add)."),
              images: List[Path] = typer.Argument(..., help="Image files to score."),
              out: Path = typer.Option(Path("score_new"), help="Where maps (PNG, .npy) and scores.json go."),
              device: str = typer.Option("auto", help="auto, cpu or cuda.")) -> None:
    """Score new images against the pool plus each other (one image is enough)."""
    def go():
        from musc.reference_pool import score_new_images
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        for result in score_new_images(pool, images, out, device):
            Console().print(f"{result['image']}: score {result['score']:.4f}  map {result['map_png']}")
    _run_guarded(go)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
