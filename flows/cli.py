"""The ``musc`` command: launches the flows, inspects artifacts, rebuilds reports, runs the pool.

Errors in the input (configuration, dataset, artifact) print one line naming the field or file
and exit with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

from inspect import Parameter, Signature
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

from musc.inputs.config import ConfigError, MuscConfig, check_decision
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
    os.environ.setdefault("DO_NOT_TRACK", "1")  # the client's telemetry notice and telemetry, off
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # the temporary server can take longer than Prefect's 20 s to start on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class _QuietFileHandler(logging.FileHandler):
    """A log file that, when it cannot be written (disk full, read-only folder), says so once
    instead of printing a "Logging error" traceback for every record."""
    failure: str | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        self.failure = getattr(error, "strerror", None) or str(error) or type(error).__name__


class _TracebacksToFile(logging.Filter):
    """Keep tracebacks off the terminal: the full record goes to a log file, the console gets the
    one-line message (``--debug`` leaves the console as it is)."""

    def __init__(self, log_file: Path):
        super().__init__()
        self.log_file = log_file
        self.handler: _QuietFileHandler | None = None
        self.failure: str | None = None

    def _save(self, record: logging.LogRecord) -> str:
        """Where the traceback went, or why it could not be saved (the message keeps the real cause)."""
        if self.handler is None and self.failure is None:
            try:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                self.handler = _QuietFileHandler(self.log_file)
                self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            except OSError as error:
                self.failure = error.strerror or str(error)
        if self.handler is not None:
            self.handler.handle(record)
            self.failure = self.failure or self.handler.failure
        if self.failure is not None:
            return f"traceback not saved: {self.log_file}: {self.failure}"
        return f"traceback in {self.log_file}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            where = self._save(record)
            record.msg = f"{record.getMessage().splitlines()[0]} ({where})"
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
        full = _no_space(error)
        if full is not None:
            _fail(full)
        console.print(f"[bold red]error:[/] {type(error).__name__}: {_first_line(error)}"
                      " (rerun with --debug for the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _no_space(error: BaseException) -> Exception | None:
    """A disk-full error anywhere in the chain (a figure, a CSV, a log, an artifact), as one line
    naming the folder and what to do."""
    from musc.store.files import NO_SPACE, no_space
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            folder = Path(error.filename).parent if error.filename else state.get("artifacts", Path("."))
            return no_space(folder)
        error = error.__cause__ or error.__context__
    return None


def _int_list(value: Optional[str], field: str) -> Optional[List[int]]:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{field}: expected comma-separated integers, got {value!r}") from None


class _QuietConsole(logging.Filter):
    """Drops Prefect's per-task INFO lines from the terminal (warnings and errors still show); the
    progress bars say what happens. The records still reach a Prefect server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _TerminalProgress:
    """A rich progress bar per stage and category (rate, time left, then the time it took), fed
    by ``musc.progress.TRACKER``; the bars stay on the screen as the summary of each stage."""

    def __init__(self, out: Console):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(
            TextColumn("{task.description:<20}"), BarColumn(bar_width=24),
            TextColumn("{task.fields[count]:<16}"),
            TextColumn("{task.fields[rate]:>15}"), TimeRemainingColumn(elapsed_when_finished=True),
            TextColumn("{task.fields[note]}"), console=out, refresh_per_second=4)
        self.rows: dict[int, int] = {}

    def update(self, job, event: str) -> None:
        if event == "start":
            self.rows[id(job)] = self.progress.add_task(f"{job.label} {job.stage}", total=max(job.total, 1),
                                                        count=self._count(job), rate="", note="")
            return
        row = self.rows.get(id(job))
        if row is None:
            return
        rate = f"{job.rate:.1f} {job.unit}/s" if job.rate and job.unit not in ("step", "degrees") else ""
        if event == "end":
            done = max(job.total, 1) if job.note in ("", "reused") else job.done
            self.progress.update(row, completed=done, count=self._count(job), rate=rate, note=job.note)
            self.progress.stop_task(row)
        else:
            self.progress.update(row, completed=job.done, count=self._count(job), rate=rate)

    @staticmethod
    def _count(job) -> str:
        return "" if job.note == "reused" else f"{min(job.done, job.total):>4}/{job.total:<4} {job.unit}"

    def __enter__(self):
        from musc.progress import TRACKER
        self.progress.start()
        TRACKER.add_listener(self)
        return self

    def __exit__(self, *exc):
        from musc.progress import TRACKER
        TRACKER.remove_listener(self)
        self.progress.stop()


def _run_output(verbose: bool):
    """In a terminal: progress bars, and Prefect's INFO lines off the screen (``--verbose`` keeps
    them, without bars). Not a terminal (CI, a log file): Prefect's lines as they are."""
    import contextlib
    out = Console()
    if verbose or not out.is_terminal:
        return contextlib.nullcontext()
    from prefect.logging.configuration import setup_logging
    setup_logging()
    quiet = _QuietConsole()
    for name in ("", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name or None).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(quiet)
    return _TerminalProgress(out)


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
         seed: int = typer.Option(0, help="Seed of the generated dataset."),
         verbose: bool = typer.Option(False, "--verbose", help="Prefect's per-task lines instead of progress bars.")
         ) -> None:
    """Generate a small synthetic MVTec-style dataset and run the whole flow on it, offline."""
    _prefect_environment()
    warnings.filterwarnings("ignore", message="pretrained=none")

    def go():
        state["artifacts"] = artifacts
        _route_tracebacks(artifacts / "musc-errors.log")
        from .demo import demo_flow
        from .server import temporary_server
        with temporary_server(), _run_output(verbose):  # the server ends with this command, even after kill -9
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
        ("verbose", bool, typer.Option(False, "--verbose", help="Prefect's per-task lines instead of progress bars.")),
    ]
    parameters = [Parameter(name, Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                  for name, kind, default in fixed + flags + rest]
    fn.__signature__ = Signature(parameters, return_annotation=None)
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
        chosen = list(options["category"] or []) or list_categories(dataset, root, exclude=[artifacts])
        if not chosen:
            raise DatasetError(f"root: no {dataset} categories found under {root}")
        cfg = MuscConfig.from_yaml(options["config"]) if options["config"] else MuscConfig()
        overrides = {field: _int_list(options[field], field) if kind == "ints" else options[field]
                     for field, kind, _ in RUN_FLAGS}
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
        from .category import checked_category
        from .dataset import dataset_flow
        try:
            categories = [checked_category(dataset, str(root), name, cfg, str(artifacts)) for name in chosen]
        except Exception:
            _preflight(cfg, None, artifacts)  # a bad configuration is reported before a bad dataset
            raise
        _preflight(cfg, categories, artifacts)
        from musc.store import mark_artifacts_root
        mark_artifacts_root(artifacts)  # a read-only or full artifacts folder: said now, naming it
        state["artifacts"] = artifacts
        _route_tracebacks(artifacts / "musc-errors.log")
        from .server import temporary_server
        with temporary_server(), _run_output(options["verbose"]):  # the server ends with this command, even after kill -9
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
    from musc.store import describe, read_only

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
            _print_evaluation(out, path, attrs, top)
    with read_only():  # a read-only command: no verification record written beside any file
        _run_guarded(go)


def _print_evaluation(out: Console, path: Path, attrs: dict, top: int) -> None:
    """Metrics, threshold and the top images of an evaluate artifact, reading only what is shown
    (the first ``top`` entries of the ranking, one name each) and only from beside the artifact."""
    import pandas as pd

    from musc.outputs.rebuild import input_path, outputs_folder
    from musc.store import open_artifact
    artifact = open_artifact(path, "evaluate")
    try:
        metrics = json.loads(attrs["metrics"])
        threshold = float(attrs["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}: attribute 'metrics' or 'threshold' is not what an evaluate artifact holds") from None
    out.print("metrics (x100): " + ", ".join(
        f"{k} {'n/a' if v is None else f'{v * 100:.2f}'}" for k, v in metrics.items()))
    out.print(f"threshold: {threshold:.6g} ({attrs.get('threshold_rule')})")
    extract = open_artifact(input_path(path, "extract"))
    count = extract.shape("names")[0]
    ranking = artifact.read("ranking", slice(0, max(top, 0)))
    per_image_file = outputs_folder(path) / "per_image.csv"
    per_image = pd.read_csv(per_image_file) if per_image_file.is_file() else None
    out.print(f"top {len(ranking)} most anomalous:")
    for rank, index in enumerate(int(i) for i in ranking):
        if not 0 <= index < count:
            raise ArtifactError(f"{path}: its ranking names image {index}, but its run has {count} images")
        name = extract.read("names", slice(index, index + 1))[0]
        detail = "" if per_image is None else (f"  score {per_image.iloc[index]['score_rscin']:.4f}"
                                               f"  {per_image.iloc[index]['decision']}")
        out.print(f"  {rank + 1}. {name}{detail}")


@app.command("report")
def report_command(path: Path = typer.Argument(..., help="An evaluate artifact, or a folder holding them.")) -> None:
    """Rebuild figures and reports from artifacts alone, without recomputing any stage. In a folder,
    stale evaluate artifacts (an input missing or changed since) are skipped and named."""
    def go():
        from musc.outputs.rebuild import rebuild_reports
        rebuilt = rebuild_reports(path)
        for written in rebuilt.written:
            Console().print(f"report: {written}")
        for stale, reason in rebuilt.skipped:
            console.print(f"skipped (stale): {stale}: {reason.removeprefix(str(stale) + ': ')}", highlight=False,
                          soft_wrap=True)
        if rebuilt.skipped:
            console.print(f"{len(rebuilt.skipped)} stale evaluate artifact(s) skipped; `musc clean {path}` "
                          f"removes what no current run uses", highlight=False, soft_wrap=True)
    _run_guarded(go)


@app.command("clean")
def clean_command(artifacts: Path = typer.Argument(..., help="An artifacts folder."),
                  dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """Remove what no current run uses: artifacts that no intact evaluate artifact reaches through
    its recorded inputs (stale evaluations, leftovers of changed images or settings, unfinished
    stages), with their manifests, .parts folders, report folders, locks and temporary files.
    Do not run it while a run writes to the same folder: what is being built now is kept only
    where its lock shows it."""
    def go():
        from musc.outputs.rebuild import clean_artifacts
        removed, busy = clean_artifacts(artifacts, dry_run)
        out = Console()
        for victim in removed:
            out.print(f"{'would remove' if dry_run else 'removed'}: {victim}", highlight=False, soft_wrap=True)
        for artifact in busy:
            out.print(f"kept (being built now): {artifact}", highlight=False, soft_wrap=True)
        out.print(f"{len(removed)} path(s) {'would be ' if dry_run else ''}removed", highlight=False)
    _run_guarded(go)


pool_app = typer.Typer(help="A reference pool of earlier images, for scoring new images one at a time.")
app.add_typer(pool_app, name="pool")


@pool_app.command("add")
def pool_add(pool: Path = typer.Option(..., help="The pool file (.h5); created if missing."),
             run: Path = typer.Argument(..., help="A category folder of a run (artifacts/<dataset>/<category>) "
                                                  "or its evaluate artifact."),
             include_anomalous: bool = typer.Option(False, help="Also add images judged anomalous."),
             max_images: Optional[int] = typer.Option(None, help="Pool size bound (default: the pool's, else 200); "
                                                                 "the oldest images leave first.")) -> None:
    """Add the LNAMD features of a scored batch to the pool (one category, one set of settings, each run once)."""
    def go():
        from musc.reference_pool import add_run_to_pool
        if max_images is not None and max_images < 1:
            raise ConfigError(f"--max-images: must be at least 1, got {max_images}")
        added, size = add_run_to_pool(pool, run, include_anomalous, max_images)
        Console().print(f"added {added} image(s); the pool holds {size}: {pool}")
        if size == 0:
            Console().print("the pool is empty: this run had no image judged normal (--include-anomalous adds all)")
    _run_guarded(go)


@pool_app.command("info")
def pool_info(pool: Path = typer.Argument(..., help="The pool file (.h5)."),
              false_alarm_rate: float = typer.Option(0.01, help="Show the threshold calibrated at this rate.")) -> None:
    """What a pool holds: category, settings, images, calibration."""
    def go():
        import time as _time

        import numpy as np
        from musc.reference_pool import PoolFile, calibrated_threshold
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        info = PoolFile(pool).info()
        settings, out = info["settings"], Console(soft_wrap=True)
        out.print(f"[bold]{pool}[/]: {info['images']} image(s) of category {settings['category']!r} "
                  f"(at most {info['max_images']}), features (L, C) = {tuple(info['feature_shape'])}")
        out.print("features: " + json.dumps(settings["features"], sort_keys=True))
        out.print(f"scoring: r_list {settings['r_list']}, topmin {settings['topmin_min']}-{settings['topmin_max']}, "
                  f"aligned_radius {settings['aligned_radius']}, msm_precision {settings['msm_precision']}")
        if info["images"]:
            stamp = lambda t: _time.strftime("%Y-%m-%d %H:%M", _time.gmtime(t))  # noqa: E731
            out.print(f"added between {stamp(info['oldest'])} and {stamp(info['newest'])} UTC")
        if len(info["self_scores"]):
            scores = info["self_scores"]
            out.print(f"leave-one-out scores: min {scores.min():.4f}, median {float(np.median(scores)):.4f}, "
                      f"max {scores.max():.4f}; threshold at false-alarm rate {false_alarm_rate:g}: "
                      f"{calibrated_threshold(scores, false_alarm_rate):.6g}")
        else:
            out.print("no calibration yet (fewer than 2 images): score-new needs --threshold")
    _run_guarded(go)


@app.command("score-new")
def score_new(pool: Path = typer.Option(..., help="The pool file (musc pool add)."),
              images: List[Path] = typer.Argument(..., help="Image files to score."),
              out: Path = typer.Option(Path("score_new"), help="Where scores.csv and maps/ go."),
              threshold: Optional[float] = typer.Option(None, help="Fixed image-score threshold (default: "
                                                                   "calibrated on the pool)."),
              false_alarm_rate: float = typer.Option(0.01, help="Calibrated threshold: the fraction of the pool's "
                                                               "own leave-one-out scores allowed to reach it."),
              device: str = typer.Option("auto", help="auto, cpu or cuda.")) -> None:
    """Score new images against the pool plus each other (one image is enough); decide normal/anomalous."""
    def go():
        from musc.reference_pool import DecisionRule, score_new_images
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        check_decision(threshold, false_alarm_rate, ("--threshold", "--false-alarm-rate"))  # NaN: all normal
        result = score_new_images(pool, images, out, DecisionRule(threshold, false_alarm_rate), device)
        for row in result["rows"]:
            Console(soft_wrap=True).print(f"{row['path']}: score {row['score']:.4f}  {row['decision']}  "
                                          f"map {row['map_png']}")
        Console(soft_wrap=True).print(f"threshold {result['threshold']:.6g} ({result['rule']}); scores: {Path(out) / 'scores.csv'}")
    _run_guarded(go)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
