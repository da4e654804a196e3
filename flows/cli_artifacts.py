"""The commands on artifacts: ``musc inspect`` (read only), ``musc report`` (reports drawn again from
artifacts alone) and ``musc clean`` (what no intact run uses, removed)."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from musc.store import ArtifactError, catalog

from . import terminal
from .options import flag


def inspect(path: Annotated[Path, typer.Argument(help="An artifact (.h5).")],
            top: Annotated[int, typer.Option(help="For evaluate artifacts: how many most anomalous images "
                                                  "to list.")] = 5,
            as_json: Annotated[bool, flag("--json", help="Print one JSON document (stage, status, digest, "
                                                         "config, inputs resolved to files, datasets) instead.")]
            = False
            ) -> None:
    """What an artifact holds: stage, config, provenance, datasets; metrics for evaluate artifacts."""
    from musc.store import describe, read_only

    def go():
        if not path.is_file():
            raise ArtifactError(f"{path}: no such artifact")
        info = describe(path)
        if as_json:
            print(json.dumps(_as_json(path, info), sort_keys=True, default=str))
            return
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


def _as_json(path: Path, info: dict) -> dict:
    """``musc inspect --json``: what the text shows, as data; inputs resolved to the files they are
    now (``resolved_inputs``) and the paths it records found where they are now (``located``:
    ``located_records``) when the artifact is intact."""
    from musc.outputs.rebuild import located_records, resolved_inputs
    attrs = dict(info["attrs"])
    document = {"path": str(path), "status": info["status"], "digest": info["digest"],
                "stage": attrs.pop("stage", None), "code_version": attrs.pop("code_version", None),
                "created": attrs.pop("created", None), "config": attrs.pop("config", None),
                "inputs": attrs.pop("inputs", None), "datasets": {
                    name: {"shape_dtype": shape, "description": info["meanings"].get(name, "")}
                    for name, shape in info["datasets"].items()}}
    if info["digest"] and isinstance(document["inputs"], dict):
        document["inputs"] = resolved_inputs(path)
        document["located"] = located_records(path)
    for name in ("metrics", "notes"):
        if isinstance(attrs.get(name), str):
            try:
                attrs[name] = json.loads(attrs[name])
            except json.JSONDecodeError:
                pass
    document["attrs"] = {name: value for name, value in attrs.items() if name not in ("complete",)}
    return document


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
    per_image_file = report_folder(path) / catalog.REPORT.per_image
    per_image = pd.read_csv(per_image_file) if per_image_file.is_file() else None
    out.print(f"top {len(ranking)} most anomalous:")
    for rank, index in enumerate(int(i) for i in ranking):
        if not 0 <= index < count:
            raise ArtifactError(f"{path}: its ranking names image {index}, but its run has {count} images")
        name = extract.read("names", slice(index, index + 1))[0]
        detail = "" if per_image is None else (f"  score {per_image.iloc[index]['score_rscin']:.4f}"
                                               f"  {per_image.iloc[index]['decision']}")
        out.print(f"  {rank + 1}. {name}{detail}")


def report_command(path: Annotated[Path, typer.Argument(help="An evaluate artifact, a folder holding them, or a "
                                                            "day's results folder (day.json).")],
                   to: Annotated[Optional[Path], typer.Option(
                       "--to", metavar="FOLDER", help="Write the reports under FOLDER (laid out as under PATH) "
                                                      "instead of beside the artifacts; nothing is written beside "
                                                      "them (a read-only artifacts folder).")] = None
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
            if to is not None:
                raise ArtifactError(f"--to: for evaluate artifacts; a day's outputs ({path}) are drawn in its folder")
            from musc.reference_pool.line import rebuild_day
            out.print(f"day: {rebuild_day(path)}")
            return
        with terminal.advice_when_read_only("give a writable --to folder" if to is not None else
                                            f"write the reports elsewhere: musc report {path} --to ELSEWHERE"):
            rebuilt = rebuild_reports(path, to)
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


def clean_command(artifacts: Annotated[Path, typer.Argument(help="An artifacts folder.")],
                  dry_run: Annotated[bool, flag("--dry-run", help="Only list what would be removed.")] = False
                  ) -> None:
    """Remove what no current run uses: artifacts that no intact evaluate artifact reaches through
    its recorded inputs (stale evaluations, leftovers of changed images or settings, unfinished
    stages), with their manifests, .parts folders, report folders, locks and temporary files.
    Do not run it while a run writes to the same folder: what is being built now is kept only
    where its lock shows it."""
    def go():
        from musc.outputs.rebuild import clean_artifacts
        with terminal.advice_when_read_only("clean removes files where they are: make the artifacts folder "
                                            "writable (--dry-run lists them without it)"):
            removed, busy = clean_artifacts(artifacts, dry_run)
        out = Console(markup=False)
        for victim in removed:
            out.print(f"{'would remove' if dry_run else 'removed'}: {victim}", highlight=False, soft_wrap=True)
        for artifact in busy:
            out.print(f"kept (being built now): {artifact}", highlight=False, soft_wrap=True)
        out.print(f"{len(removed)} path(s) {'would be ' if dry_run else ''}removed", highlight=False)
    terminal.run_guarded(go)
