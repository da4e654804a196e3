"""Each day's folder of new parts, scored against a reference pool: decisions, a report with the
trend of past days, a Prefect table artifact and an event that an Automation can notify on."""
from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, MissingContextError
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from prefect.runtime import flow_run as this_run
from prefect.states import Running
from pydantic import Field, create_model

from musc.inputs.config import check_decision
from musc.reference_pool import DecisionRule, score_new_images
from musc.outputs.evaluation import threshold_text
from musc.reference_pool.daily import (anomalous_parts, append_history, day_images, day_summary,
                                       flagged_for_review, history_path, maps_markdown, ordered, parse_day,
                                       part_name, plot_trends, read_history, readable, review_counts,
                                       review_markdown, table_rows, thumbnail, verdicts_by_day_markdown,
                                       write_day_report)
from musc.reference_pool.review import read_verdicts, record_verdicts, verdict_history_path
from musc.stages.faults import fail_once_point
from tasks.publish import artifact_key
from tasks.publish import publish as publish_artifact

from .names import daily_run_name

EVENT = "musc.daily.scored"
THUMBNAILS = 48  # parts shown with a heat-map thumbnail in the markdown artifact, anomalous first
REVIEW_WAIT_S = 12 * 3600  # how long a day's review form waits for an inspector
NOT_REVIEWED = "not reviewed"
Verdict = Literal["defect", "good", "not reviewed"]


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
    """Scores, decisions, maps, scores.csv and the day's record; the maps come back as small thumbnails
    only (on the day's one colour scale); the warnings (each part not scored, named) go to the run's log."""
    with warnings.catch_warnings(record=True) as caught:  # each said once, in the run's log
        warnings.simplefilter("always")
        try:
            result = score_new_images(pool, images, out, rule, day=day)
        finally:
            for warning in caught:
                _warn(str(warning.message))
    maps = result.pop("maps")
    low, high = result["map_range"]
    for row in ordered(result["rows"])[:THUMBNAILS]:
        row["thumbnail"] = thumbnail(np.load(maps[row["path"]]), vmin=low, vmax=high)
    return result


def pool_name(pool: str | Path) -> str:
    """The pool's name in artifact keys and event resources: its file name, slugged, and a short
    digest of its resolved path, so that two lines' pools of the same file name never share one."""
    where = hashlib.sha256(str(Path(pool).resolve()).encode()).hexdigest()[:8]
    return artifact_key(Path(pool).stem, where).removeprefix("musc-")


def publish(pool: str, result: dict, summary: dict, report: Path, folder: Path,
            trend: str | None = None, reviews: list[str] = ()) -> None:
    """The day's (``summary["day"]``) table artifact, its flagged parts, trend and thumbnails
    (markdown), the inspectors' verdicts by day (``reviews``) and the event. ``folder``: the day's
    folder, which the parts are named relative to; the numbers are rounded for reading (the raw
    values stay in scores.csv)."""
    day = summary["day"]
    name = pool_name(pool)
    key = artifact_key("daily", name)
    rows = ordered(result["rows"])
    publish_artifact("table", key, table_rows(rows, folder),
                     f"Parts of {day} (pool {Path(pool).name}): {summary['anomalous']} anomalous of "
                     f"{summary['count']}; anomalous at "
                     f"score >= {threshold_text(summary['threshold'], result['rule'])}"
                     + (f"; {len(result['skipped'])} not scored" if result["skipped"] else "") + f"; report {report}")
    maps = maps_markdown(summary, rows, result["rule"], folder, trend, result["skipped"])
    if reviews:  # the days' parts, flagged, confirmed and dismissed (the false alarms inspectors saw)
        maps += "\n\n## Inspectors' verdicts by day\n\n" + "\n".join(reviews)
    publish_artifact("markdown", f"{key}-maps", maps, f"flagged parts, trend and heat maps of {day} (pool {Path(pool).name})")
    anomalous = anomalous_parts(rows, folder)
    emit_event(event=EVENT,
               resource={"prefect.resource.id": f"musc.pool.{name}",
                         "prefect.resource.name": Path(pool).name, "musc.pool.path": str(Path(pool).resolve()),
                         "musc.day": day,
                         "musc.anomalous": "true" if anomalous else "false"},
               payload={**readable(summary), "threshold_rule": result["rule"], "anomalous_parts": anomalous,
                        "not_scored": [part_name(path, folder) for path, _ in result["skipped"]],
                        "report": str(report), "scores_csv": str(report.parent / "scores.csv")})


def review_form(parts: list[str]) -> type[RunInput]:
    """The review form: one choice per part (fields part_1, part_2, ... titled by the parts' names,
    "not reviewed" until chosen), then a note for all of them."""
    fields = {f"part_{i}": (Verdict, Field(NOT_REVIEWED, title=part)) for i, part in enumerate(parts, 1)}
    fields["note"] = (str, Field("", title="note (kept with each verdict)"))
    return create_model("DayReview", __base__=RunInput, **fields)


def _resume_after_wait() -> None:
    """The wait ran out: the run is left Paused, whose pause the server now holds expired (it would
    fail the run on any move but to Failed); forced back to Running, the flow ends as it would have,
    and a form sent from now on is refused by the server (the run is no longer paused)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(this_run.id, Running(message="review wait ran out: not reviewed"), force=True)


VERDICT_EVENTS = {"defect": "musc.part.confirmed", "good": "musc.part.dismissed"}


def emit_verdicts(day, recorded: list[tuple[str, str]], note: str) -> str:
    """Each verdict as a Prefect event (``musc.part.confirmed``: defect, ``musc.part.dismissed``:
    good) on the pool's resource (the daily flow's ``musc.pool.<name>``), with the part, day and
    score: from ``musc review`` and from the daily run's review form alike. Only with a Prefect
    server configured (PREFECT_API_URL): without one, emitting would start a temporary server for
    nothing. Never fails the caller: returns a line saying what happened."""
    from prefect.settings import get_current_settings
    if not get_current_settings().api.url:
        return "events not sent: no Prefect server configured (PREFECT_API_URL); the verdicts are in the files above"
    try:
        from prefect.events import emit_event

        from musc.reference_pool.daily import SCORE_DECIMALS

        from tasks.publish import artifact_key
        if day.pool is not None:
            resource = {"prefect.resource.id": f"musc.pool.{pool_name(day.pool)}",
                        "prefect.resource.name": day.pool.name, "musc.pool.path": str(day.pool.resolve())}
        else:
            resource = {"prefect.resource.id": f"musc.{artifact_key('day', day.name).removeprefix('musc-')}",
                        "prefect.resource.name": str(day.folder)}
        scores = day.table.drop_duplicates("path").set_index("path")
        for part, verdict in recorded:
            emit_event(event=VERDICT_EVENTS[verdict], resource={**resource, "musc.day": day.name},
                       payload={"part": part, "day": day.name, "verdict": verdict, "note": note,
                                "score": round(float(scores.loc[part, "score"]), SCORE_DECIMALS),
                                "decision": str(scores.loc[part, "decision"]), "scores_csv": str(day.folder / "scores.csv")})
        return f"{len(recorded)} event(s) sent: {', '.join(sorted({VERDICT_EVENTS[v] for _, v in recorded}))}"
    except Exception as error:  # noqa: BLE001 - the verdicts are recorded; an event is a notice
        return f"events not sent: {str(error).splitlines()[0][:160] if str(error) else type(error).__name__}"


def ask_review(summary: dict, result: dict, folder: Path, target: Path, wait_s: int) -> dict[str, str]:
    """Pause the run for the inspectors' verdicts on the flagged parts (the Resume form in the UI,
    pictures in its description); record what they chose as ``musc review`` does. Returns each part
    asked about (by name) with its verdict; after ``wait_s`` seconds without an answer they all
    stand as "not reviewed" and nothing is recorded."""
    asked = flagged_for_review(result["rows"])
    names = [part_name(row["path"], folder) for row in asked]
    form = review_form(names).with_initial_data(
        description=review_markdown(summary, result["rows"], result["rule"], folder, target))
    logger = get_run_logger()
    logger.info(f"{summary['day']}: {len(asked)} flagged part(s) await review for {wait_s} s (Resume in the UI, "
                f"or musc review {target})")
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=wait_s)
    except FlowPauseTimeout:
        _resume_after_wait()
        logger.warning(f"{summary['day']}: no review within {wait_s} s; the flagged parts stay not reviewed "
                       f"(musc review {target} records verdicts later)")
        return dict.fromkeys(names, NOT_REVIEWED)
    chosen = {name: getattr(answer, f"part_{i}") for i, name in enumerate(names, 1)}
    by_verdict = {verdict: [row["path"] for row, name in zip(asked, names) if chosen[name] == verdict]
                  for verdict in ("good", "defect")}
    day, recorded = record_verdicts(target, good=by_verdict["good"], defect=by_verdict["defect"], note=answer.note)
    logger.info(f"{summary['day']}: recorded " + (", ".join(f"{part_name(part, folder)} {verdict}"
                                                          for part, verdict in recorded) or "no verdict")
                + "; " + emit_verdicts(day, recorded, answer.note))
    return chosen


@flow(name="musc-daily-folder", flow_run_name=daily_run_name, log_prints=True)
def daily_folder_flow(pool: str, root: str, day: str = "", out: str = "", decision: DecisionRule = DecisionRule(),
                      timezone: str = "UTC", review_wait_s: int = REVIEW_WAIT_S) -> dict:
    """Score every image of ``root/<day>`` against the pool (default day: the date of the run's
    scheduled start in ``timezone``, so a retry scores the same day). Decides by ``decision``
    (its fields ``threshold``, ``false_alarm_rate``, ``rule``): a fixed threshold, else by its rule:
    calibrated on the pool at the false-alarm rate (default 0.01), or ``reviewed`` (F1-optimal on
    the parts inspectors reviewed, once the verdict history holds both verdicts). Writes scores.csv, maps and
    report.md into ``out`` (default <root>/<day>/musc), appends the day to the history beside the
    pool, publishes a table artifact and emits the ``musc.daily.scored`` event. Then, when the day
    has flagged parts and the run is a deployment's (a server whose UI shows the form), the run pauses
    up to ``review_wait_s`` seconds for the inspectors' verdicts (0: no review; ``musc review``
    records verdicts any time); the next day's run runs meanwhile, a run of its own.

    Args:
        pool: The reference pool file (.h5, musc pool add), as the worker's machine sees it.
        root: The folder holding one folder of images per day, named YYYY-MM-DD.
        day: The day to score (YYYY-MM-DD); empty: the day of the run's scheduled start.
        out: Where the day's results go; empty: <root>/<day>/musc.
        decision: How a part is decided anomalous: a fixed threshold, else the rule (calibrated on
            the pool at false_alarm_rate, or reviewed: learned from the inspectors' verdicts).
        timezone: The time zone in which the scheduled start gives the day.
        review_wait_s: How long a day with flagged parts waits for the review form (seconds; 0: no form).
    """
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
    report = write_day_report(target, summary, result["rows"], result["rule"], trend, history, result["skipped"])
    publish(pool, result, summary, report, folder, trend, verdicts_by_day_markdown(history))
    not_scored = f"; {len(result['skipped'])} not scored" if result["skipped"] else ""
    print(f"{day}: {summary['anomalous']} anomalous of {summary['count']} (threshold "
          f"{threshold_text(summary['threshold'], result['rule'])}){not_scored}; report {report.with_suffix('.html')}")
    if summary["anomalous"] and review_wait_s > 0 and deployment.id:
        return {**summary, "review": ask_review(summary, result, folder, target, int(review_wait_s))}
    return summary
