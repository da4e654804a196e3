"""The ``musc`` command: launches the flows, inspects artifacts, rebuilds reports, runs the pool.

Errors in the input (configuration, dataset, artifact) print one line naming the field or file
and exit with status 2; ``--debug`` shows the traceback instead (``flows.terminal``).
"""
import json
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from musc.inputs.config import DEFAULT_K_LISTS, ConfigError, MuscConfig, check_decision
from musc.inputs.datasets import DATASETS, DatasetError
from musc.store import ArtifactError

from . import terminal

def _help_without_value(get_help_option):
    """click's --help is a flag: shown without the ``<bool>`` typer's help would give it."""
    def wrapped(self, ctx):
        option = get_help_option(self, ctx)
        if option is not None:
            option.metavar = ""
        return option
    return wrapped


for _kind in (typer.core.TyperCommand, typer.core.TyperGroup):
    _kind.get_help_option = _help_without_value(_kind.get_help_option)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="MuSc zero-shot anomaly detection as a Prefect workflow with HDF5 artifacts.")


def _flag(*names: str, help: str) -> Any:  # noqa: A002 - typer's name
    """An on/off option, shown without a value in the help."""
    return typer.Option(*names, metavar="", help=help)


@app.callback()
def main(debug: Annotated[bool, _flag("--debug", help="Show the traceback of an error.")] = False) -> None:
    terminal.SESSION.debug = debug


def _launch(artifacts: Path, verbose: bool, prepare: Callable[[], Callable[[], dict]]) -> None:
    """Run a flow from the command line, for ``demo`` and ``run``: ``prepare()`` checks the inputs
    (its errors come before any Prefect work) and returns the flow call. Then tracebacks go to
    <artifacts>/musc-errors.log, a temporary Prefect server runs unless PREFECT_API_URL names one,
    progress bars show (``verbose``: Prefect's lines), and the metrics table is printed."""
    terminal.prefect_environment()
    server_given = bool(os.environ.get("PREFECT_API_URL"))  # before the temporary server sets it

    def go() -> dict:
        start = prepare()
        terminal.SESSION.artifacts = artifacts
        terminal.route_tracebacks(artifacts / "musc-errors.log")
        from .server import temporary_server
        with temporary_server(), terminal.run_output(verbose, server_given):  # the server ends with this command, even after kill -9
            return start()
    _print_metrics(terminal.run_guarded(go))


def _print_metrics(result: dict) -> None:
    """The run's metrics as the UI's table shows them (every metric of metrics.csv, short names,
    x100, the mean row), with the images flagged anomalous per category; then each category's
    threshold and its rule, and the report page."""
    import pandas as pd

    from musc.outputs.evaluation import threshold_text
    from musc.outputs.published import LEGEND, metric_rows
    from musc.outputs.summary import flagged_text, unlabeled_lines
    rows = metric_rows(pd.read_csv(result["table"], index_col="category"))
    outcomes = result["categories"]
    out = Console(markup=False)

    def metrics_table(names: list[str], title: str, caption: str | None) -> Table:
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("category", no_wrap=True, min_width=8)
        for name in ["flagged", *names]:
            table.add_column(name, justify="right", no_wrap=True)
        for row in rows:
            outcome = outcomes.get(row["category"])  # none for the mean row
            if outcome is None:
                table.add_section()
            table.add_row(row["category"], flagged_text(outcome) if outcome else "", *(row[name] for name in names))
        return table

    def fits(names: list[str]) -> bool:
        return Measurement.get(out, out.options.update_width(10**5), metrics_table(names, "", None)).maximum <= out.width

    names, groups = list(rows[0])[1:], []
    if fits(names):
        groups = [names]
    else:  # a narrow terminal: the image-level metrics, then the pixel-level ones, as many tables as it takes
        for level in ("I-", "P-"):
            for name in (n for n in names if n.startswith(level)):
                if groups and groups[-1][0][:2] == level and fits(groups[-1] + [name]):
                    groups[-1].append(name)
                else:
                    groups.append([name])
    if any(value != "n/a" for row in rows for value in list(row.values())[1:]):
        for index, group in enumerate(groups):
            out.print(metrics_table(group, "MuSc metrics (x100)" if index == 0 else "",
                                    LEGEND if index == len(groups) - 1 else None))
    else:  # nothing could be computed (no labels, no masks): no table of n/a
        out.print("MuSc: no labels or masks, so no metrics; what the run decided:", highlight=False)
    for name, outcome in outcomes.items():
        out.print(f"{name}: {flagged_text(outcome)} flagged anomalous, at score >= "
                  f"{threshold_text(outcome['threshold'], outcome['threshold_rule'])}", highlight=False, soft_wrap=True)
        if all(value is None for value in outcome["metrics"].values()):
            for line in unlabeled_lines(name, outcome["outputs"]):
                out.print(line, highlight=False, soft_wrap=True)
        if outcome.get("guard_marked"):  # --reference: what the batch's blind spot may hide
            out.print(f"{name}: warning: {len(outcome['guard_marked'])} image(s) flagged by the reference pool and "
                      f"called normal by the batch: {', '.join(outcome['guard_marked'])}", highlight=False, soft_wrap=True)
    out.print(f"report: {result['report']}", highlight=False, soft_wrap=True)


Artifacts = Annotated[Path, typer.Option(help="The folder the artifacts, reports and error log are written to.")]
Verbose = Annotated[bool, _flag("--verbose", help="Print Prefect's per-task lines instead of progress bars.")]


@app.command()
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


# musc run: one option per MuscConfig field (tests/test_cli.py checks that none is missing).

def _config_option(field: str, text: str, **kwargs: Any) -> Any:
    """The option of a configuration field; its default (MuscConfig's) is added to the help. The
    option itself defaults to None: a flag left out keeps the value of --config's file."""
    default = next(f.default for f in fields(MuscConfig) if f.name == field)
    if default is not None:
        text += f" Default: {','.join(map(str, default)) if isinstance(default, tuple) else default}."
    return typer.Option(help=text, rich_help_panel="Run configuration (overrides --config)", **kwargs)


INTS = "<int,int,...>"  # how a list of integers is shown in the help
PER_DATASET = ", ".join(f"{','.join(map(str, k))} for {name}" for name, k in DEFAULT_K_LISTS.items())


@app.command("run")
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
    backbone: Annotated[Optional[str], _config_option(
        "backbone", "The backbone: an open_clip model name, the path of an open_clip JSON model config, "
                    "or timm:<name>.")] = None,
    pretrained: Annotated[Optional[str], _config_option(
        "pretrained", "The backbone's weights: an open_clip tag, a local checkpoint file, or none "
                      "(seeded random weights, for tests only).")] = None,
    image_size: Annotated[Optional[int], _config_option(
        "image_size", "The side S, in pixels, the images are resized to; a multiple of the patch size.")] = None,
    layers: Annotated[Optional[str], _config_option(
        "layers", "The backbone blocks whose patch tokens are used, 0-based.", metavar=INTS)] = None,
    r_list: Annotated[Optional[str], _config_option(
        "r_list", "The LNAMD aggregation degrees, odd.", metavar=INTS)] = None,
    topmin_min: Annotated[Optional[float], _config_option(
        "topmin_min", "The start of MSM's window over each patch's sorted votes, as a fraction of the "
                      "other images.")] = None,
    topmin_max: Annotated[Optional[float], _config_option(
        "topmin_max", "The end of MSM's window over each patch's sorted votes, as a fraction of the "
                      "other images.")] = None,
    k_list: Annotated[Optional[str], _config_option(
        "k_list", f"The RsCIN window sizes. Default: {PER_DATASET}.", metavar=INTS)] = None,
    divide_num: Annotated[Optional[int], _config_option(
        "divide_num", "The number of subsets a category is scored in (1: all images score each other).")] = None,
    seed: Annotated[Optional[int], _config_option(
        "seed", "The seed of the subset shuffles and of random backbone weights.")] = None,
    batch_size: Annotated[Optional[int], _config_option(
        "batch_size", "The images per extraction batch; it changes no result.")] = None,
    block_size: Annotated[Optional[int], _config_option(
        "block_size", "The images per side of an MSM tile; it changes no result.")] = None,
    device: Annotated[Optional[str], _config_option(
        "device", "Where to compute: auto, cpu, cuda or cuda:<n>.")] = None,
    quick_gelu: Annotated[Optional[str], _config_option(
        "quick_gelu", "Whether the backbone uses QuickGELU: auto (as its model config or tag says), true "
                      "or false.")] = None,
    threshold: Annotated[Optional[float], _config_option(
        "threshold", "A fixed image-score threshold for the decisions. Default: F1-optimal when labels of "
                     "both classes exist, else median + 3.5 MAD of the scores.")] = None,
    pixel_threshold: Annotated[Optional[float], _config_option(
        "pixel_threshold", "A fixed pixel threshold for the binary defect masks. Default: F1-optimal on the "
                           "ground-truth pixels, else the robust rule on the image scores.")] = None,
    overlay_normalisation: Annotated[Optional[str], _config_option(
        "overlay_normalisation", "How the heat-map overlays are scaled: set (one scale for the category, "
                                 "comparable across images) or image (each image its own).")] = None,
    aligned_radius: Annotated[Optional[int], _config_option(
        "aligned_radius", "Let a patch be voted on only by the patches within this many grid steps of its "
                          "position (for fixtured parts). Default: any position, as in the paper.")] = None,
    msm_precision: Annotated[Optional[str], _config_option(
        "msm_precision", "MSM's arithmetic: fp32; bf16 (screened in bf16, the same scores); bf16-fast "
                         "(bf16 only, faster, not exact).")] = None,
    tiles: Annotated[Optional[str], _config_option(
        "tiles", "Cut each image into RxC tiles (e.g. 2x2), each resized to the image size, to find small "
                 "defects on large parts; maps are stitched at the image's full resolution. Default: whole image.")] = None,
    tile_overlap: Annotated[Optional[float], _config_option(
        "tile_overlap", "Overlap of neighbouring tiles, a fraction of a tile (0 to below 0.5; default 0).")] = None,
    tile_mixing: Annotated[Optional[str], _config_option(
        "tile_mixing", "aligned (default): tiles of the same position score each other; all: every tile "
                       "against every tile of the other images (parts not aligned).")] = None,
    reference: Annotated[Optional[str], _config_option(
        "reference", "A reference pool of good parts (musc pool add): each image is also scored against it "
                     "alone; per_image.csv and the report mark the images the pool flags while the batch calls "
                     "them normal (a defect shared by many images of one batch hides from mutual scoring), "
                     "with a warning when several are.", metavar="POOL")] = None,
) -> None:
    """Score a dataset: extract, aggregate, score, classify, evaluate; reuses what is already done."""
    given = dict(locals())  # the options as typed; a configuration flag left out is None
    flags = {f.name: given[f.name] for f in fields(MuscConfig) if given[f.name] is not None}

    def prepare():
        from musc.inputs.datasets import list_categories
        chosen = list(category or []) or list_categories(dataset, root, exclude=[artifacts])
        if not chosen:
            raise DatasetError(f"root: no {dataset} categories found under {root}")
        cfg = _run_config(config, flags)
        if cfg.reference is not None and not Path(cfg.reference).is_file():
            raise ArtifactError(f"--reference: no such pool file {cfg.reference} (create it with musc pool add)")
        if cfg.reference is not None:
            cfg = cfg.replace(reference=str(Path(cfg.reference).resolve()))
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


def _run_config(config_file: Path | None, flags: dict[str, Any]) -> MuscConfig:
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


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help="An artifact (.h5).")],
            top: Annotated[int, typer.Option(help="For evaluate artifacts: how many most anomalous images "
                                                  "to list.")] = 5
            ) -> None:
    """What an artifact holds: stage, config, provenance, datasets; metrics for evaluate artifacts."""
    from musc.store import describe, read_only

    def go():
        if not path.is_file():
            raise ArtifactError(f"{path}: no such artifact")
        info = describe(path)
        out = Console(soft_wrap=True, markup=False)  # long lines whole: a digest is never cut or broken
        attrs = info["attrs"]
        out.print(Text.assemble((str(path), "bold"), f"  stage: {attrs.get('stage')}  ({info['status']})"))
        out.print(f"digest: {info['digest']}  code: {attrs.get('code_version')}  created: {attrs.get('created')}",
                  highlight=False)
        out.print("config: " + json.dumps(attrs.get("config"), sort_keys=True), markup=False, highlight=False)
        out.print("inputs: " + json.dumps(attrs.get("inputs"), sort_keys=True), markup=False, highlight=False)
        table = Table("dataset", "shape dtype", "meaning")
        for name, shape in info["datasets"].items():
            table.add_row(name, shape, info["meanings"].get(name, ""))
        out.print(table)
        if attrs.get("stage") == "evaluate" and info["digest"]:
            _print_evaluation(out, path, attrs, top)
        if attrs.get("stage") == "decide" and info["digest"]:  # a day's decisions
            from musc.outputs.evaluation import threshold_text
            from musc.store import open_artifact
            decisions = open_artifact(path, "decide").read("decisions")
            out.print(f"{int(decisions.sum())} anomalous of {len(decisions)} part(s), at score >= "
                      f"{threshold_text(float(attrs['threshold']), attrs.get('threshold_rule'))}", highlight=False)
    with read_only():  # a read-only command: no verification record written beside any file
        terminal.run_guarded(go)


def _print_evaluation(out: Console, path: Path, attrs: dict, top: int) -> None:
    """Metrics, threshold and the top images of an evaluate artifact, reading only what is shown
    (the first ``top`` entries of the ranking, one name each) and only from beside the artifact."""
    import pandas as pd

    from musc.outputs.evaluation import metric_text, threshold_text
    from musc.outputs.rebuild import inputs_of
    from musc.store import report_folder
    from musc.store import open_artifact
    artifact = open_artifact(path, "evaluate")
    try:
        metrics = json.loads(attrs["metrics"])
        threshold = float(attrs["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}: attribute 'metrics' or 'threshold' is not what an evaluate artifact holds") from None
    out.print("metrics (x100): " + ", ".join(f"{k} {metric_text(v)}" for k, v in metrics.items()))
    out.print(f"threshold: {threshold_text(threshold, attrs.get('threshold_rule'))}", highlight=False)
    extract = open_artifact(inputs_of(path, "extract")[0])
    count = extract.shape("names")[0]
    ranking = artifact.read("ranking", slice(0, max(top, 0)))
    per_image_file = report_folder(path) / "per_image.csv"
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
def report_command(path: Annotated[Path, typer.Argument(help="An evaluate artifact, a folder holding them, or a "
                                                            "day's results folder (day.json).")]
                   ) -> None:
    """Rebuild figures and reports from artifacts alone, without recomputing any stage; prints the
    pages (report.html) written. In a folder, stale evaluate artifacts (an input missing or changed
    since) are skipped and named; given an artifacts root or a dataset folder, each dataset's page
    (_report/index.html) is rebuilt too."""
    def go():
        from musc.outputs.rebuild import rebuild_reports
        from musc.reference_pool.day import DAY_RECORD
        out = Console(soft_wrap=True, highlight=False, markup=False)
        if (path / DAY_RECORD).is_file():  # a day of the line: its outputs from its artifacts
            from musc.reference_pool.line import rebuild_day
            out.print(f"day: {rebuild_day(path)}")
            return
        rebuilt = rebuild_reports(path)
        for written in rebuilt.written:
            out.print(f"report: {written}")
        for page in rebuilt.pages:
            out.print(f"dataset page: {page}")
        for stale, reason in rebuilt.skipped:
            terminal.console.print(f"skipped (stale): {stale}: {reason.removeprefix(str(stale) + ': ')}",
                                   highlight=False, soft_wrap=True)
        if rebuilt.skipped:
            terminal.console.print(f"{len(rebuilt.skipped)} stale evaluate artifact(s) skipped; `musc clean {path}` "
                                   f"removes what no current run uses", highlight=False, soft_wrap=True)
    terminal.run_guarded(go)


@app.command("clean")
def clean_command(artifacts: Annotated[Path, typer.Argument(help="An artifacts folder.")],
                  dry_run: Annotated[bool, _flag("--dry-run", help="Only list what would be removed.")] = False
                  ) -> None:
    """Remove what no current run uses: artifacts that no intact evaluate artifact reaches through
    its recorded inputs (stale evaluations, leftovers of changed images or settings, unfinished
    stages), with their manifests, .parts folders, report folders, locks and temporary files.
    Do not run it while a run writes to the same folder: what is being built now is kept only
    where its lock shows it."""
    def go():
        from musc.outputs.rebuild import clean_artifacts
        removed, busy = clean_artifacts(artifacts, dry_run)
        out = Console(markup=False)
        for victim in removed:
            out.print(f"{'would remove' if dry_run else 'removed'}: {victim}", highlight=False, soft_wrap=True)
        for artifact in busy:
            out.print(f"kept (being built now): {artifact}", highlight=False, soft_wrap=True)
        out.print(f"{len(removed)} path(s) {'would be ' if dry_run else ''}removed", highlight=False)
    terminal.run_guarded(go)


pool_app = typer.Typer(help="A reference pool of earlier images, for scoring new images one at a time.")
app.add_typer(pool_app, name="pool")


@pool_app.command("add")
def pool_add(pool: Annotated[Path, typer.Option(help="The pool file (.h5); created if missing.")],
             run: Annotated[Path, typer.Argument(help="A category folder of a run (artifacts/<dataset>/<category>) "
                                                      "or its evaluate artifact; or a day's results folder "
                                                      "(scores.csv): its parts confirmed good by musc review.")],
             include_flagged: Annotated[bool, _flag("--include-flagged", "--include-anomalous",
                                                    help="Also add images labelled defective or decided anomalous "
                                                         "(--include-anomalous: the former name).")] = False,
             include_normal: Annotated[bool, _flag("--include-normal", help="From a day's folder: also the parts "
                                                   "decided normal that no inspector called a defect.")] = False,
             max_images: Annotated[Optional[int], typer.Option(help="Pool size bound (default: the pool's, else "
                                                                    "200); the oldest images leave first.")] = None
             ) -> None:
    """Add the LNAMD features of a scored batch's good images to the pool (one category, one set of
    settings, each run once). Images labelled defective or decided anomalous are left out, each named.
    From a day's results folder: the parts an inspector confirmed good (re-extracted with the pool's settings)."""
    def go():
        from musc.reference_pool import add_day_to_pool, add_run_to_pool
        from musc.reference_pool.day import DAY_RECORD
        if max_images is not None and max_images < 1:
            raise ConfigError(f"--max-images: must be at least 1, got {max_images}")
        day = (run / DAY_RECORD).is_file() or (run / "scores.csv").is_file()
        if day:
            if include_flagged:
                raise ConfigError("--include-flagged: a day's folder adds only the parts confirmed good")
            added = add_day_to_pool(pool, run, max_images, include_normal=include_normal)
        else:
            if include_normal:
                raise ConfigError("--include-normal: for a day's folder (day.json); a run adds its good images")
            added = add_run_to_pool(pool, run, include_flagged, max_images)
        out = Console(soft_wrap=True, highlight=False, markup=False)
        for name, reason in added.left_out:
            out.print(f"left out: {name} ({reason})")
        for name, source in added.dropped:
            out.print(f"dropped (the oldest, beyond the pool's bound): {name} ({source})")
        adds = "--include-normal adds the parts decided normal" if day else "--include-flagged adds them"
        out.print(f"added {added.added} image(s); the pool holds {added.size}: {pool}"
                  + (f"; {len(added.left_out)} left out ({adds})" if added.left_out else "")
                  + (f"; {len(added.dropped)} dropped (--max-images)" if added.dropped else ""))
        if added.size == 0:
            out.print("the pool is empty: this run had no good image (--include-flagged adds all)")
    terminal.run_guarded(go)


@pool_app.command("info")
def pool_info(pool: Annotated[Path, typer.Argument(help="The pool file (.h5).")],
              false_alarm_rate: Annotated[float, typer.Option(help="Show the threshold calibrated at this "
                                                                  "rate.")] = 0.01
              ) -> None:
    """What a pool holds: category, settings, images, calibration."""
    def go():
        import time as _time

        import numpy as np
        from musc.reference_pool import PoolFile, calibrated_threshold
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        info = PoolFile(pool).info()
        settings, out = info["settings"], Console(soft_wrap=True, markup=False)
        out.print(Text.assemble((str(pool), "bold"), f": {info['images']} image(s) of category {settings['category']!r} "
                  f"(at most {info['max_images']}), features (L, C) = {tuple(info['feature_shape'])}"))
        out.print("features: " + json.dumps(settings["features"], sort_keys=True))
        scoring = settings["score"]
        out.print(f"scoring: r_list {settings['r_list']}, topmin {scoring['topmin_min']}-{scoring['topmin_max']}, "
                  f"aligned_radius {scoring['aligned_radius']}, msm_precision {scoring['msm_precision']}")
        if settings["features"].get("tiles") is not None:
            (rows, columns), (height, width) = settings["features"]["tiles"], settings["part_size"]
            out.print(f"tiled: {rows} x {columns} tiles (overlap {settings['features'].get('tile_overlap') or 0:g}) of "
                      f"{width} x {height} px parts, tile mixing {scoring.get('tile_mixing')}; new parts of "
                      "another size are skipped")
        if info["images"]:
            stamp = lambda t: _time.strftime("%Y-%m-%d %H:%M", _time.gmtime(t))  # noqa: E731
            out.print(f"added between {stamp(info['oldest'])} and {stamp(info['newest'])} UTC")
            out.print("sources: " + "; ".join(f"{source}: {count}" for source, count in info["sources"].items()))
        if len(info["self_scores"]):
            scores = info["self_scores"]
            out.print(f"leave-one-out scores: min {scores.min():.4f}, median {float(np.median(scores)):.4f}, "
                      f"max {scores.max():.4f}; threshold at false-alarm rate {false_alarm_rate:g}: "
                      f"{calibrated_threshold(scores, false_alarm_rate):.6g}")
        else:
            out.print("no calibration yet (fewer than 2 images): score-new needs --threshold")
    terminal.run_guarded(go)


@app.command("review")
def review(day: Annotated[Path, typer.Argument(help="A day's results folder (its day.json), written by "
                                                   "musc score-new or the daily flow.")],
           good: Annotated[Optional[List[str]], typer.Option(
               metavar="NAME", help="A part found good (a false alarm when flagged); repeat for several. NAME: "
                                    "its path as in scores.csv, its file name, or its identity (the part column).")] = None,
           defect: Annotated[Optional[List[str]], typer.Option(
               metavar="NAME", help="A part confirmed defective; repeat for several. A part that had joined the "
                                    "pool leaves it.")] = None,
           note: Annotated[str, typer.Option(help="A note kept with each verdict of this call.")] = "",
           reviewer: Annotated[Optional[str], typer.Option(help="Who reviewed. Default: the user name.")] = None,
           pool: Annotated[Optional[Path], typer.Option(
               help="The pool the day was scored against, where it is now (moved or copied); default: where "
                    "the day's record says.")] = None,
           ) -> None:
    """List a day's flagged parts; record inspectors' verdicts (--good, --defect) in the verdict
    history of the pool the day was scored against, then draw the day's outputs again."""
    def go():
        from musc.reference_pool.day import flagged, load_day, view
        from musc.reference_pool.review import day_pool, record_verdicts
        out = Console(soft_wrap=True, highlight=False, markup=False)
        record = load_day(day)
        found = day_pool(record, pool)
        if found.digest != record.pool["digest"]:
            terminal.console.print(f"warning: the pool {found.path} changed since {record.day} was scored (digest "
                                   f"{found.digest[:12]}, then {record.pool['digest'][:12]}): the scores are those of "
                                   "the pool of then", highlight=False, soft_wrap=True)
        if good or defect:
            done = record_verdicts(day, good or [], defect or [], note, reviewer, pool=pool)
            for verdict in done.recorded:
                out.print(f"{verdict.name}: {verdict.verdict}")
            for removed in done.removed:
                out.print(f"left the pool {found.path.name}: {removed}")
            out.print(f"{len(done.recorded)} verdict(s) recorded in {done.history}"
                      + ("" if done.recorded else " (each part had that verdict already)"))
            from .daily import emit_verdicts, republish
            out.print(emit_verdicts(done))
            out.print(republish(done))
            shown = done.day
        else:
            shown = view(record)
        marked = flagged(shown.rows)
        out.print(f"{shown.record.day}: {len(marked)} flagged of {len(shown.rows)} part(s)")
        for row in marked:
            out.print(f"  {row['path']}  score {row['score']:.4f}  {row['verdict'] or 'not reviewed'}  "
                      f"part {row['part'][:12]}  map {row['map_png']}")
    terminal.run_guarded(go)


@app.command("score-new")
def score_new(pool: Annotated[Path, typer.Option(help="The pool file (musc pool add).")],
              images: Annotated[List[Path], typer.Argument(help="Image files to score.")],
              out: Annotated[Path, typer.Option(help="Where scores.csv, maps/ and the day's record go.")] = Path("score_new"),
              threshold: Annotated[Optional[float], typer.Option(help="Fixed image-score threshold (default: "
                                                                      "calibrated on the pool).")] = None,
              false_alarm_rate: Annotated[float, typer.Option(
                  help="Calibrated threshold: the fraction of the pool's own leave-one-out scores allowed to "
                       "reach it.")] = 0.01,
              threshold_rule: Annotated[str, typer.Option(
                  help="calibrated (on the pool, at --false-alarm-rate) or reviewed (F1-optimal on the scores "
                       "of the parts inspectors reviewed against this pool, once both verdicts are there).")]
              = "calibrated",
              artifacts: Annotated[Optional[Path], typer.Option(
                  help="Where the parts' artifacts go (HDF5: features, scores, decisions; reused by reruns and "
                       "by musc pool add). Default: OUT/artifacts.")] = None,
              device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto") -> None:
    """Score new images, each against the pool only (one image is enough); decide normal/anomalous.
    Images scored before (the same content) reuse their artifacts."""
    def go():
        from musc.reference_pool import DecisionRule, score_new_images
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        check_decision(threshold, false_alarm_rate, ("--threshold", "--false-alarm-rate"))  # NaN: all normal
        day = score_new_images(pool, images, out, DecisionRule(threshold, false_alarm_rate, threshold_rule), device,
                               artifacts=artifacts)
        console = Console(soft_wrap=True, markup=False, highlight=False)
        for row in day.rows:
            console.print(f"{row['path']}: score {row['score']:.4f}  {row['decision']}  map {row['map_png']}")
        console.print(f"threshold {day.threshold:.6g} ({day.rule}); scores: {Path(out) / 'scores.csv'}")
    terminal.run_guarded(go)


# The former names, still imported by tests/test_reliability_second.py and bench/rerun.py: the
# integrator points those at flows.terminal and removes these two lines.


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
