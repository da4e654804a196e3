"""Each day's folder of new parts, scored against a reference pool: decisions, a report with the
trend of past days, a Prefect table artifact and an event that an Automation can notify on."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import MissingContextError

from musc.inputs.config import check_decision
from musc.reference_pool import DecisionRule, score_new_images
from musc.outputs.evaluation import threshold_text
from musc.reference_pool.daily import (anomalous_parts, append_history, day_images, day_summary, history_path,
                                       ordered, parse_day, part_name, plot_trends, read_history, readable,
                                       review_counts, review_markdown, table_rows, thumbnail, write_day_report)
from musc.reference_pool.review import read_verdicts, verdict_history_path
from musc.stages.faults import fail_once_point
from tasks.publish import artifact_key
from tasks.publish import publish as publish_artifact

from .names import daily_run_name

EVENT = "musc.daily.scored"
THUMBNAILS = 48  # parts shown with a heat-map thumbnail in the markdown artifact, anomalous first


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:  # called as a function, outside a flow run
        logging.getLogger("musc").warning(message)


def run_day(timezone: str = "UTC") -> str:
    """The day a run scores: the date of its *scheduled* start (a retry after midnight of a run
    scheduled at 23:30 still scores that day), in ``timezone``."""
    from prefect.runtime import flow_run
    return flow_run.scheduled_start_time.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")


@task(name="score-day", cache_policy=NO_CACHE, persist_result=False)
def score_day_task(pool: str, images: list[str], out: str, rule: DecisionRule, day: str) -> dict:
    """Scores, decisions, maps, scores.csv and the day's record; the maps come back as small thumbnails only."""
    result = score_new_images(pool, images, out, rule, day=day)
    maps = result.pop("maps")
    top = max(float(max(m.max() for m in maps.values())), 1e-12)
    for row in ordered(result["rows"])[:THUMBNAILS]:
        row["thumbnail"] = thumbnail(maps[row["path"]], vmax=top)
    return result


def pool_name(pool: str | Path) -> str:
    """The pool's name in artifact keys and event resources: its file name, slugged, and a short
    digest of its resolved path, so that two lines' pools of the same file name never share one."""
    where = hashlib.sha256(str(Path(pool).resolve()).encode()).hexdigest()[:8]
    return artifact_key(Path(pool).stem, where).removeprefix("musc-")


def publish(day: str, pool: str, result: dict, summary: dict, report: Path, folder: Path,
            reviews: list[str] = ()) -> None:
    """The day's table artifact, its thumbnails (markdown) and the event. ``folder``: the day's
    folder, which the parts are named relative to; the numbers are rounded for reading (the raw
    values stay in scores.csv)."""
    name = pool_name(pool)
    key = artifact_key("daily", name)
    rows = ordered(result["rows"])
    publish_artifact("table", key, table_rows(rows, folder),
                     f"Parts of {day} (pool {Path(pool).name}): {summary['anomalous']} anomalous of "
                     f"{summary['count']}; anomalous at "
                     f"score >= {threshold_text(summary['threshold'], result['rule'])}; report {report}")
    lines = [f"# Parts of {day}: {summary['anomalous']} anomalous of {summary['count']}", "",
             "| part | score | decision | heat map |", "|---|---|---|---|"]
    lines += [f"| {part_name(row['path'], folder)} | {row['score']:.4f} | {row['decision']} | "
              f"![map]({row['thumbnail']}) |" for row in rows if "thumbnail" in row]
    if reviews:  # the days' parts, flagged, confirmed and dismissed (the false alarms inspectors saw)
        lines += ["", "## Inspectors' verdicts by day", "", *reviews]
    publish_artifact("markdown", f"{key}-maps", "\n".join(lines), f"heat maps of {day} (pool {Path(pool).name})")
    anomalous = anomalous_parts(rows, folder)
    emit_event(event=EVENT,
               resource={"prefect.resource.id": f"musc.pool.{name}",
                         "prefect.resource.name": Path(pool).name, "musc.pool.path": str(Path(pool).resolve()),
                         "musc.day": day,
                         "musc.anomalous": "true" if anomalous else "false"},
               payload={**readable(summary), "threshold_rule": result["rule"], "anomalous_parts": anomalous,
                        "report": str(report), "scores_csv": str(report.parent / "scores.csv")})


@flow(name="musc-daily-folder", flow_run_name=daily_run_name, log_prints=True)
def daily_folder_flow(pool: str, root: str, day: str = "", out: str = "", decision: DecisionRule = DecisionRule(),
                      timezone: str = "UTC") -> dict:
    """Score every image of ``root/<day>`` against the pool (default day: the date of the run's
    scheduled start in ``timezone``, so a retry scores the same day). Decides by ``decision``
    (its fields ``threshold``, ``false_alarm_rate``, ``rule``): a fixed threshold, else by its rule:
    calibrated on the pool at the false-alarm rate (default 0.01), or ``reviewed`` (F1-optimal on
    the parts inspectors reviewed, once the verdict history holds both verdicts). Writes scores.csv, maps and
    report.md into ``out`` (default <root>/<day>/musc), appends the day to the history beside the
    pool, publishes a table artifact and emits the ``musc.daily.scored`` event."""
    rule = decision if isinstance(decision, DecisionRule) else DecisionRule(**dict(decision or {}))
    check_decision(rule.threshold, rule.false_alarm_rate)  # NaN would make every part normal
    day = day or run_day(timezone)
    parse_day(day)  # a malformed day fails here, naming it
    folder = Path(root) / day
    images, outside = day_images(root, day)
    for entry in outside:
        _warn(f"{entry}: leads out of {root} (a symlink); not scored")
    if not images:
        raise FileNotFoundError(f"root: no images in {folder} for {day}")
    read_history(history_path(pool))  # a corrupt history fails now, naming it, not after the work
    fail_once_point("daily")
    target = Path(out or folder / "musc")
    result = score_day_task(pool, images, str(target), rule, day)
    summary = day_summary(day, result["rows"], result["threshold"], result["pool_size"])
    history = review_counts(append_history(history_path(pool), summary), read_verdicts(verdict_history_path(pool)))
    trend = plot_trends(history, target / "trend.png")
    report = write_day_report(target, summary, result["rows"], result["rule"], trend, history)
    publish(day, pool, result, summary, report, folder, review_markdown(history))
    print(f"{day}: {summary['anomalous']} anomalous of {summary['count']} (threshold "
          f"{threshold_text(summary['threshold'], result['rule'])}); report {report.with_suffix('.html')}")
    return summary
