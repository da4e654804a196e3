"""The ``musc`` command: launches the flows, inspects artifacts, rebuilds reports, runs the pool.

Errors a user can cause (``musc.errors.MuscError``) print one line naming the field or file and
exit with status 2; ``--debug`` shows the traceback instead (``flows.terminal``). The run's
configuration options are derived from ``MuscConfig``'s declaration (``flows.options``); the other
commands are in ``cli_artifacts`` and ``cli_line``.
"""
if __name__ == "__main__":  # python -m flows.cli, as the musc command (flows.entry): a stop while loading
    from flows.stopping import stop_while_loading
    stop_while_loading()

import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer

from musc.inputs.config import MuscConfig
from musc.inputs.datasets import DATASETS
from musc.errors import DatasetError
from musc.store import ArtifactError

from . import cli_artifacts, cli_automations, cli_line, terminal
from .metrics_table import print_metrics
from .options import Command, Group, flag, options_of

app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="MuSc zero-shot anomaly detection as a Prefect workflow with HDF5 artifacts.")


@app.callback()
def main(debug: Annotated[bool, flag("--debug", help="Show the traceback of an error.")] = False) -> None:
    terminal.SESSION.debug = debug


def _launch(artifacts: Path, verbose: bool, prepare: Callable[[], Callable[[], dict]]) -> None:
    """Run a flow from the command line, for ``demo`` and ``run``: ``prepare()`` checks the inputs
    (its errors come before any Prefect work) and returns the flow call. Then tracebacks go to
    <artifacts>/musc-errors.log, a temporary Prefect server runs unless PREFECT_API_URL names one,
    progress bars show (``verbose``: Prefect's lines), and the metrics table is printed."""
    terminal.prefect_environment()
    server_given = bool(os.environ.get("PREFECT_API_URL"))  # before the temporary server sets it

    @terminal.advice_when_read_only("give a writable --artifacts folder")
    def go() -> dict:
        start = prepare()
        terminal.SESSION.artifacts = artifacts
        terminal.route_tracebacks(artifacts / "musc-errors.log")
        from .server import temporary_server
        with temporary_server(), terminal.run_output(verbose, server_given):  # the server ends with this command, even after kill -9
            return start()
    print_metrics(terminal.run_guarded(go))


Artifacts = Annotated[Path, typer.Option(help="The folder the artifacts, reports and error log are written to.")]
Verbose = Annotated[bool, flag("--verbose", help="Print Prefect's per-task lines instead of progress bars.")]


@app.command(cls=Command)
def demo(data: Annotated[Path, typer.Option(help="The folder the synthetic dataset is generated in.")]
         = Path("demo_data"),
         artifacts: Artifacts = Path("artifacts"),
         seed: Annotated[int, typer.Option(help="The seed of the generated dataset.")] = 0,
         verbose: Verbose = False) -> None:
    """Generate a small synthetic MVTec-style dataset and run the whole flow on it, offline."""
    warnings.filterwarnings("ignore", message="pretrained=none")

    def prepare():
        from .demo import demo_flow
        return lambda: demo_flow(str(data), str(artifacts), seed)
    _launch(artifacts, verbose, prepare)


@app.command("run", cls=Command)
@options_of(MuscConfig, "Run configuration (overrides --config)")  # one option per field, from its declaration
def run(
    dataset: Annotated[str, typer.Option(help=f"The dataset's layout: {', '.join(DATASETS)}.")],
    root: Annotated[Path, typer.Option(help="The dataset's root folder.")],
    category: Annotated[Optional[List[str]], typer.Option(
        metavar="<name>", help="A category to score; repeat the flag for several. Default: every category "
                               "under the root.")] = None,
    artifacts: Artifacts = Path("artifacts"),
    config: Annotated[Optional[Path], typer.Option(
        help="A YAML file of configuration fields (those of musc.MuscConfig); the flags below override it.")] = None,
    dask: Annotated[Optional[str], typer.Option(
        help="Run the MSM tiles on Dask: 'local' (a cluster for this run) or a scheduler address, "
             "tcp://host:8786. Default: threads of this process.")] = None,
    verbose: Verbose = False,
    **settings: Any,
) -> None:
    """Score a dataset: extract, aggregate, score, classify, evaluate; reuses what is already done."""
    flags = {name: value for name, value in settings.items() if value is not None}  # a flag left out keeps the file's

    def prepare():
        from musc.inputs.datasets import list_categories
        chosen = list(category or []) or list_categories(dataset, root, exclude=[artifacts])
        if not chosen:
            raise DatasetError(f"root: no {dataset} categories found under {root}")
        cfg = run_config(config, flags)
        if cfg.reference is not None and not Path(cfg.reference).is_file():
            raise ArtifactError(f"--reference: no such pool file {cfg.reference} (create it with musc pool add)")
        from .category import checked_category
        from .dataset import dataset_flow
        # the cheap checks first (settings, the backbone's geometry from its configuration, the dataset),
        # then what may load a model or fetch weights; each category is loaded and checked once per
        # command, and the flow takes them as they are
        categories = [checked_category(dataset, str(root), name, cfg, str(artifacts)) for name in chosen]
        if cfg.reference is not None:  # a pool that cannot guard these runs: said before any work
            from musc.reference_pool.guard import check_reference
            from musc.stages import Run
            check_reference(cfg.reference, [Run(c, cfg, str(artifacts.resolve())) for c in categories])
        _preflight(cfg, categories, artifacts)
        from musc.store import mark_artifacts_root
        mark_artifacts_root(artifacts)  # a read-only or full artifacts folder: said now, naming it
        return lambda: dataset_flow(dataset, str(root), categories, cfg, str(artifacts), dask)
    _launch(artifacts, verbose, prepare)


def run_config(config_file: Path | None, flags: dict[str, Any]) -> MuscConfig:
    """The run's configuration: the YAML file's fields (else the defaults), then the flags given."""
    cfg = MuscConfig.from_yaml(config_file) if config_file else MuscConfig()
    return cfg.replace(**flags)


def _preflight(cfg: MuscConfig, categories: list | None, artifacts: Path) -> None:
    """The stages' preflight (musc.stages.preflight) before any work: a bad backbone is one line
    naming the field; its warnings (the bf16 screen unavailable) are shown."""
    from musc.stages import Run, preflight
    root = str(artifacts.resolve())
    runs = None if categories is None else [Run(c, cfg, root) for c in categories]
    for note in preflight(cfg, runs):
        terminal.console.print(f"warning: {note}", highlight=False)




app.command(cls=Command)(cli_artifacts.inspect)
app.command("report", cls=Command)(cli_artifacts.report_command)
app.command("clean", cls=Command)(cli_artifacts.clean_command)
pool_app = typer.Typer(cls=Group, help="A reference pool of earlier images, for scoring new images one at a time.")
app.add_typer(pool_app, name="pool")
pool_app.command("add", cls=Command)(cli_line.pool_add)
pool_app.command("info", cls=Command)(cli_line.pool_info)
app.command("review", cls=Command)(cli_line.review)
app.command("score-new", cls=Command)(cli_line.score_new)
app.command("serve", cls=Command)(cli_line.serve)
automations_app = typer.Typer(cls=Group, help="Prefect Automations of configs/ on the server PREFECT_API_URL names.")
app.add_typer(automations_app, name="automations")
automations_app.command("install", cls=Command)(cli_automations.install)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
