"""The line's commands: ``musc pool add`` and ``musc pool info``, ``musc score-new`` and ``musc
serve`` (their decision options derived from ``DecisionRule``'s declaration) and ``musc review``."""

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.text import Text

from musc.inputs.config import ConfigError
from musc.reference_pool.rule import DecisionRule
from musc.store import ArtifactError
from musc.store.catalog import DAY

from . import terminal
from .options import flag, options_of


def pool_add(pool: Annotated[Path, typer.Option(help="The pool file (.h5); created if missing.")],
             run: Annotated[Path, typer.Argument(help="A category folder of a run (artifacts/<dataset>/<category>) "
                                                      "or its evaluate artifact; or a day's results folder "
                                                      "(scores.csv): its parts confirmed good by musc review.")],
             include_flagged: Annotated[bool, flag("--include-flagged", "--include-anomalous",
                                                    help="Also add images labelled defective or decided anomalous "
                                                         "(--include-anomalous: the former name).")] = False,
             include_normal: Annotated[bool, flag("--include-normal", help="From a day's folder: also the parts "
                                                   "decided normal that no inspector called a defect.")] = False,
             max_images: Annotated[Optional[int], typer.Option(help="Pool size bound (default: the pool's, else "
                                                                    "200); the oldest images leave first.")] = None
             ) -> None:
    """Add the LNAMD features of a scored batch's good images to the pool (one category, one set of
    settings, each run once). Images labelled defective or decided anomalous are left out, each named.
    From a day's results folder: the parts an inspector confirmed good (their features as they were scored: no backbone)."""
    def go():
        from musc.reference_pool import add_day_to_pool, add_run_to_pool
        if max_images is not None and max_images < 1:
            raise ConfigError(f"--max-images: must be at least 1, got {max_images}")
        day = (run / DAY.record).is_file() or (run / DAY.scores).is_file()
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


def pool_info(pool: Annotated[Path, typer.Argument(help="The pool file (.h5).")],
              false_alarm_rate: Annotated[float, typer.Option(help="Show the threshold calibrated at this "
                                                                  "rate.")] = DecisionRule().false_alarm_rate
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
            out.print(f"  {terminal.shown(row['file'])}  score {row['score']:.4f}  {row['verdict'] or 'not reviewed'}  "
                      f"part {row['part'][:12]}  map {terminal.shown(row['map_file'])}")
    terminal.run_guarded(go)


def given_models(backbone: List[Path]) -> list[str]:
    """The --backbone files or folders, each there: one that is not is said (a typo is not looked past)."""
    for path in backbone:
        if not path.exists():
            raise ConfigError(f"--backbone: no such file or folder {path}")
    return [str(p) for p in backbone]


@options_of(DecisionRule, "Decision", flags={"rule": "--threshold-rule"})  # one option per field, from its declaration
def score_new(pool: Annotated[Path, typer.Option(help="The pool file (musc pool add).")],
              images: Annotated[List[Path], typer.Argument(help="Image files to score.")],
              out: Annotated[Path, typer.Option(help="Where scores.csv, maps/ and the day's record go.")] = Path("score_new"),
              artifacts: Annotated[Optional[Path], typer.Option(
                  help="Where the parts' artifacts go (HDF5: features, scores, decisions; reused by reruns and "
                       "by musc pool add). Default: OUT/artifacts.")] = None,
              device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
              backbone: Annotated[List[Path], typer.Option(metavar="<path>",
                  help="The pool's model or checkpoint file (or a folder holding it) when it moved since the pool "
                       "was made; found by its content (also looked for beside the pool and in $MUSC_MODELS). "
                       "Repeat for several.")] = [],  # noqa: B006 - typer's way for a repeated option
              **decision) -> None:
    """Score new images, each against the pool only (one image is enough); decide normal/anomalous.
    Images scored before (the same content) reuse their artifacts."""
    def go():
        from musc.reference_pool import score_new_images
        rule = DecisionRule(**{name: value for name, value in decision.items() if value is not None})  # checked: NaN
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        with terminal.advice_when_read_only("give a writable --out folder (and --artifacts, if given)"):
            day = score_new_images(pool, images, out, rule, device, artifacts=artifacts,
                                   models=given_models(backbone))
        console = Console(soft_wrap=True, markup=False, highlight=False)
        for row in day.rows:
            console.print(f"{terminal.shown(row['file'])}: score {row['score']:.4f}  {row['decision']}  "
                          f"map {terminal.shown(row['map_file'])}")
        console.print(f"threshold {day.threshold:.6g} ({day.rule}); scores: {Path(out) / 'scores.csv'}")
    terminal.run_guarded(go)



@options_of(DecisionRule, "Decision", flags={"rule": "--threshold-rule"})
def serve(pool: Annotated[Path, typer.Option(help="The pool file (musc pool add).")],
          watch: Annotated[Path, typer.Option(help="The folder new parts arrive in (its subfolders too).")],
          out: Annotated[Path, typer.Option(help="Where each day's results go: OUT/<YYYY-MM-DD> (scores.csv, maps/, "
                                                 "day.json, artifacts/), the day a part arrived (local time).")],
          interval: Annotated[float, typer.Option(help="Seconds between looks at the folder.", min=0.05)] = 1.0,
          device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
          backbone: Annotated[List[Path], typer.Option(metavar="<path>",
              help="The pool's model or checkpoint file (or a folder holding it) when it moved since the pool was "
                   "made (as for score-new).")] = [],  # noqa: B006 - typer's way for a repeated option
          **decision) -> None:
    """Keep the pool and its backbone loaded, watch a folder and score each new part as it arrives
    (a file taken once it stopped changing; a changed file is a new part), as score-new would; one
    line per part. Ctrl-C or SIGTERM stops it."""
    def go():
        import time as clock

        from musc.reference_pool.serving import serve as serving
        rule = DecisionRule(**{name: value for name, value in decision.items() if value is not None})
        if not pool.is_file():
            raise ArtifactError(f"{pool}: no such pool file (create it with musc pool add)")
        models = given_models(backbone)
        console = Console(soft_wrap=True, markup=False, highlight=False)
        started = clock.perf_counter()

        def scored(look) -> None:
            rows = look.rows()
            if not rows:  # none of them could be scored: said by the warnings above
                return
            for row in rows:
                console.print(f"{terminal.shown(row['file'])}: score {row['score']:.4f}  {row['decision']}  "
                              f"map {terminal.shown(row['map_file'])}")
            console.print(f"{len(rows)} part(s) in {look.seconds:.2f} s ({look.seconds / max(len(rows), 1):.2f} s "
                          f"each); day {look.view.record.day}: {terminal.shown(look.view.record.folder / DAY.scores)}")

        def failed(error, files) -> None:
            console.print(f"not scored: {terminal.first_line(error)}")

        with terminal.advice_when_read_only("give a writable --out folder"):
            console.print(f"watching {terminal.shown(watch)} (every {interval:g} s), pool {pool.name}; "
                          f"results in {terminal.shown(out)}/<day>; Ctrl-C stops")
            serving(pool, watch, out, rule, device, models, interval, scored, failed)
        console.print(f"stopped after {clock.perf_counter() - started:.0f} s")
    terminal.run_guarded(go)
