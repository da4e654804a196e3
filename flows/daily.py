"""Each day's folder of new parts, scored against a reference pool through the stage graph (each
part's features and pool scores, the day's decisions: Prefect tasks with Cached states), then the
day's outputs, a Prefect table and markdown artifact, an event an Automation can notify on, and a
review form for the flagged parts that have no verdict yet."""
from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Literal

from prefect import flow, get_client, get_run_logger
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, MissingContextError
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from prefect.runtime import flow_run as this_run
from prefect.states import Completed, Running
from pydantic import Field, create_model

from musc import store
from musc.store.catalog import DAY
from musc.store.naming import named_from
from musc.outputs.evaluation import ANOMALOUS, threshold_text
from musc.reference_pool.daily import (SCORE_DECIMALS, anomalous_parts, day_images, flagged_for_review,
                                       history_path, maps_markdown, ordered, parse_day, part_name, read_history,
                                       readable, review_counts, review_markdown, table_rows, thumbnail,
                                       verdicts_by_day_markdown)
from musc.reference_pool.day import DayView
from musc.reference_pool.line import conclude, prepare
from musc.reference_pool.review import Review, record_verdicts
from musc.reference_pool.rule import DecisionRule
from musc.reference_pool.verdicts import per_day, verdict_history_path
from musc.stages import walk
from musc.stages.faults import fail_once_point
from tasks.ui import artifact_key
from tasks.ui import publish as publish_artifact

from .category import run_stage
from .names import daily_run_name, run_day

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


def pool_name(pool: str | Path) -> str:
    """The pool's name in artifact keys and event resources: its file name, slugged, and a short
    digest of its resolved path, so that two lines' pools of the same file name never share one."""
    where = hashlib.sha256(str(Path(pool).resolve()).encode()).hexdigest()[:8]
    return artifact_key(Path(pool).stem, where).removeprefix("musc-")


def pool_resource(pool: str | Path, pool_id: str | None = None) -> dict[str, str]:
    """The event resource of a pool: its name (``pool_name``), file and identity."""
    return {"prefect.resource.id": f"musc.pool.{pool_name(pool)}", "prefect.resource.name": Path(pool).name,
            "musc.pool.path": str(Path(pool).resolve()), **({"musc.pool.id": pool_id} if pool_id else {})}


@functools.lru_cache(maxsize=1024)
def _thumbnail(root: str, pool_score: str, low: float, high: float) -> str:
    from musc.store import open_artifact
    return thumbnail(open_artifact(Path(root) / pool_score, "pool_score").read("map"), vmin=low, vmax=high)


def with_thumbnails(day: DayView) -> list[dict]:
    """The day's rows, the first ``THUMBNAILS`` (anomalous first) with a small heat map on the day's
    scale (each map read once per process)."""
    rows = [dict(row) for row in ordered(day.rows)]
    low, high = day.map_range
    for row in rows[:THUMBNAILS]:
        row["thumbnail"] = _thumbnail(str(day.record.root), day.record.parts[row["part"]]["pool_score"], low, high)
    return rows


def publish(day: DayView, folder: Path, review: str = "") -> None:
    """The day's table artifact, its flagged parts with their pictures, the trend and thumbnails
    (markdown), the inspectors' verdicts by day, and (``review`` empty: when the day is first
    scored) the event. ``folder``: the day's folder, which the parts are named relative to; the
    numbers are rounded for reading (the raw values stay in scores.csv). ``review``: how the review
    stands (said in the artifacts' descriptions)."""
    record, summary = day.record, day.summary()
    name = pool_name(record.pool_file)
    key = artifact_key("daily", name)
    pool = record.pool_file.name
    rows = with_thumbnails(day)
    report = named_from(record.folder / DAY.report, folder)  # the day's files named from its folder
    said = f"; review: {review}" if review else ""
    publish_artifact("table", key, table_rows(rows, folder),
                     f"Parts of {record.day} (pool {pool}): {summary['anomalous']} anomalous of "
                     f"{summary['count']}; anomalous at score >= {threshold_text(summary['threshold'], day.rule)}"
                     + (f"; {len(day.skipped)} not scored" if day.skipped else "") + f"{said}; report {report}")
    history = review_counts(read_history(history_path(record.pool_file)),
                            per_day(verdict_history_path(record.pool_file), record.pool["id"]))
    maps = maps_markdown(summary, rows, day.rule, folder, record.folder / DAY.trend, day.skipped)
    reviews = verdicts_by_day_markdown(history)
    if reviews:  # the days' parts, flagged, confirmed and dismissed (the false alarms inspectors saw)
        maps += "\n\n## Inspectors' verdicts by day\n\n" + "\n".join(reviews)
    publish_artifact("markdown", f"{key}-maps", maps, f"flagged parts, trend and heat maps of {record.day} "
                                                      f"(pool {pool}){said}")
    if review:
        return
    emit_event(event=EVENT, resource={**pool_resource(record.pool_file, record.pool["id"]), "musc.day": record.day,
                                      "musc.anomalous": "true" if summary["anomalous"] else "false"},
               payload={**readable(summary), "threshold_rule": day.rule, "anomalous_parts": anomalous_parts(rows, folder),
                        "not_scored": [path for path, _ in day.skipped],
                        "folder": str(folder), "report": report, "scores_csv": named_from(record.folder / DAY.scores, folder)})


def no_parts(pool: str, day: str, folder: Path, why: str) -> dict:
    """A day without parts (no folder, or none in it): said in the run's table artifact and event,
    and the run ends Completed."""
    key = artifact_key("daily", pool_name(pool))
    publish_artifact("table", key, [{"part": "no parts", "score": "", "decision": "", "verdict": "", "map": ""}],
                     f"Parts of {day} (pool {Path(pool).name}): no parts ({why})")
    emit_event(event=EVENT, resource={**pool_resource(pool), "musc.day": day, "musc.anomalous": "false"},
               payload={"day": day, "count": 0, "anomalous": 0, "no_parts": why, "anomalous_parts": []})
    print(f"{day}: no parts ({why})")
    return {"day": day, "count": 0, "anomalous": 0, "no_parts": why}


def review_form(asked: list[dict]) -> type[RunInput]:
    """The review form: per part asked about a choice ("not reviewed" until chosen) titled by its
    name and a note of its own, fields named by the part's identity (never by a position: a form's
    answer cannot land on another part); then who reviewed."""
    fields = {}
    for row in asked:
        tag = row["part"][:16]
        fields[f"part_{tag}"] = (Verdict, Field(NOT_REVIEWED, title=row["name"]))
        fields[f"note_{tag}"] = (str, Field("", title=f"note on {row['name']}"))
    fields["reviewer"] = (str, Field("", title="reviewed by"))
    return create_model("DayReview", __base__=RunInput, **fields)


def resume_after_wait() -> None:
    """The wait ran out: the run is left Paused, whose pause the server now holds expired (it would
    fail the run on any move but to Failed); forced back to Running, the flow ends as it would have,
    and a form sent from now on is refused by the server (the run is no longer paused)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(this_run.id, Running(message="review wait ran out: not reviewed"), force=True)


VERDICT_EVENTS = {"defect": "musc.part.confirmed", "good": "musc.part.dismissed"}


def emit_verdicts(review: Review) -> str:
    """Each verdict recorded as a Prefect event (``musc.part.confirmed``: defect, ``musc.part.dismissed``:
    good) on the pool's resource (the daily flow's ``musc.pool.<name>``), with the part (its name and
    identity), day, score and note: from ``musc review`` and from the daily run's review form alike.
    Only with a Prefect server configured (PREFECT_API_URL): without one, emitting would start a
    temporary server for nothing. Never fails the caller: returns a line saying what happened."""
    from prefect.settings import get_current_settings
    if not review.recorded:
        return "no new verdict: no event sent"
    if not get_current_settings().api.url:
        return "events not sent: no Prefect server configured (PREFECT_API_URL); the verdicts are in the files above"
    try:
        record = review.day.record
        rows = {row["part"]: row for row in review.day.rows}
        for verdict in review.recorded:
            emit_event(event=VERDICT_EVENTS[verdict.verdict],
                       resource={**pool_resource(record.pool_file, record.pool["id"]), "musc.day": record.day},
                       payload={"part": verdict.name, "identity": verdict.part, "day": record.day,
                                "verdict": verdict.verdict, "note": verdict.note, "reviewer": verdict.reviewer,
                                "score": round(float(rows[verdict.part]["score"]), SCORE_DECIMALS),
                                "decision": str(rows[verdict.part]["decision"]),
                                "scores_csv": str(record.folder / DAY.scores)})  # where musc review ran: its own path
        return (f"{len(review.recorded)} event(s) sent: "
                f"{', '.join(sorted({VERDICT_EVENTS[v.verdict] for v in review.recorded}))}")
    except Exception as error:  # noqa: BLE001 - the verdicts are recorded; an event is a notice
        return f"events not sent: {str(error).splitlines()[0][:160] if str(error) else type(error).__name__}"


def republish(review: Review) -> str:
    """A daily day's UI artifacts published again after ``musc review`` recorded verdicts (its report
    and trend are drawn again by the review itself), with a Prefect server configured; a line saying
    what happened."""
    from prefect.settings import get_current_settings
    record = review.day.record
    if not record.daily or not review.recorded:
        return "the day's outputs drawn again" if review.recorded else "nothing changed"
    if not get_current_settings().api.url:
        return "the day's report and trend drawn again; its UI artifacts not published (no Prefect server configured)"
    try:
        publish(review.day, record.source_folder, review=f"{len(review.recorded)} verdict(s) recorded by musc review")
        return "the day's report, trend and UI artifacts published again"
    except Exception as error:  # noqa: BLE001 - the verdicts are recorded; the artifacts are a view
        return f"the day's UI artifacts not published: {str(error).splitlines()[0][:160] if str(error) else type(error).__name__}"


def ask_review(day: DayView, folder: Path, wait_s: int):
    """Pause the run for the inspectors' verdicts on the day's flagged parts that have none yet (the
    Resume form in the UI, pictures in its description); record what they chose as ``musc review``
    does, then draw and publish the day again. The pause is keyed by the parts asked about: a retry
    of a reviewed day asks only about flagged parts without a verdict (a late one), and an answer
    given before is never replayed onto other parts. Returns the run's final state: Completed,
    named "Reviewed", or "Not reviewed" after ``wait_s`` seconds without an answer."""
    summary, logger = day.summary(), get_run_logger()
    flagged = [row for row in day.scored_rows() if row["decision"] == ANOMALOUS]
    asked = [dict(row, name=part_name(row["file"], folder)) for row in flagged_for_review(day.scored_rows())
             if not row["verdict"]]
    if not asked:
        logger.info(f"{day.record.day}: every flagged part has a verdict already; nothing to review")
        return Completed(name="Reviewed", message="every flagged part has a verdict", data=summary)
    key = "review-" + hashlib.sha256(" ".join(sorted(row["part"] for row in asked)).encode()).hexdigest()[:16]
    form = review_form(asked).with_initial_data(
        description=review_markdown(summary, asked, len(flagged), day.rule, folder, day.record.folder))
    logger.info(f"{day.record.day}: {len(asked)} flagged part(s) await review for {wait_s} s (Resume in the UI, "
                f"or musc review {day.record.folder})")
    try:  # not suspend_flow_run: its process is gone when the wait ends and the server fails the run
        # ("paused and never resumed"), so no "Not reviewed" (docs/OPERATIONS.md, Review in the UI)
        answer = pause_flow_run(wait_for_input=form, timeout=wait_s, key=key)
    except FlowPauseTimeout:
        resume_after_wait()
        logger.warning(f"{day.record.day}: no review within {wait_s} s; the flagged parts stay not reviewed "
                       f"(musc review {day.record.folder} records verdicts later)")
        publish(day, folder, review=f"not reviewed (the form waited {wait_s} s)")
        return Completed(name="Not reviewed", message=f"no review within {wait_s} s",
                         data={**summary, "review": "not reviewed"})
    chosen = {row["part"]: getattr(answer, f"part_{row['part'][:16]}") for row in asked}
    notes = {row["part"]: getattr(answer, f"note_{row['part'][:16]}") for row in asked}
    review = record_verdicts(day.record.folder, good=[p for p, v in chosen.items() if v == "good"],
                             defect=[p for p, v in chosen.items() if v == "defect"], notes=notes,
                             reviewer=answer.reviewer)
    names = {row["part"]: row["name"] for row in asked}
    logger.info(f"{day.record.day}: recorded " + (", ".join(f"{names.get(v.part, v.name)} {v.verdict}"
                                                              for v in review.recorded) or "no verdict")
                + "; " + emit_verdicts(review))
    for removed in review.removed:
        logger.warning(f"left the pool: {removed}")
    publish(review.day, folder, review=f"{len(review.recorded)} verdict(s) recorded")
    return Completed(name="Reviewed", message=f"{len(review.recorded)} verdict(s) recorded",
                     data={**review.day.summary(), "review": {names[p]: v for p, v in chosen.items()}})


@flow(name="musc-daily-folder", flow_run_name=daily_run_name, log_prints=True)
def daily_folder_flow(pool: str, root: str, day: str = "", out: str = "", decision: DecisionRule = DecisionRule(),
                      timezone: str = "UTC", review_wait_s: int = REVIEW_WAIT_S):
    """Score every image of ``root/<day>`` against the pool (default day: the date of the run's
    scheduled start in ``timezone``, so a retry scores the same day), each part through the stage
    graph: its features and its scores against the pool (reused when a retry or a rerun finds them),
    then the day's decisions by ``decision`` (its fields ``threshold``, ``false_alarm_rate``,
    ``rule``: a fixed threshold, else calibrated on the pool at the false-alarm rate (default
    0.01), or ``reviewed``: F1-optimal on the parts inspectors reviewed against this pool, once
    both verdicts are there). Writes scores.csv, maps and report.md into ``out`` (default
    <root>/<day>/musc; the parts' artifacts in its folder artifacts), the day's summary into the
    history beside the pool, publishes a table
    artifact and emits the ``musc.daily.scored`` event. A day without a folder or without parts
    ends Completed, saying so. Then, when the day has flagged parts without a verdict and the run
    is a deployment's (a server whose UI shows the form), the run pauses up to ``review_wait_s``
    seconds for the inspectors' verdicts (0: no review; ``musc review`` records verdicts any
    time); the next day's run runs meanwhile, a run of its own.

    Args:
        pool: The reference pool file (.h5, musc pool add), as the worker's machine sees it.
        root: The folder holding one folder of images per day, named YYYY-MM-DD.
        day: The day to score (YYYY-MM-DD); empty: the day of the run's scheduled start.
        out: Where the day's results go; empty: the folder musc inside the day's folder.
        decision: How a part is decided anomalous: a fixed threshold, else the rule (calibrated on
            the pool at false_alarm_rate, or reviewed: learned from the inspectors' verdicts).
        timezone: The time zone in which the scheduled start gives the day.
        review_wait_s: How long a day with flagged parts waits for the review form (seconds; 0: no form).
    """
    rule = decision if isinstance(decision, DecisionRule) else DecisionRule(**dict(decision or {}))  # checked: NaN
    # would make every part normal
    day = day or run_day(timezone)
    parse_day(day)  # a malformed day fails here, naming it
    folder = Path(root) / day
    images, outside = day_images(root, day)
    for _, why in outside:
        _warn(why)
    if not folder.is_dir():
        return no_parts(pool, day, folder, f"no folder {folder}")
    if not images:
        return no_parts(pool, day, folder, f"no images in {folder}")
    read_history(history_path(pool))  # a corrupt history fails now, naming it, not after the work
    store.check_writable(history_path(pool).parent, "the history of days",  # and so does a read-only one
                         "the daily flow keeps each day's summary beside the pool: put the pool in a folder the "
                         "flow can write")
    fail_once_point("daily")
    target = Path(out or folder / "musc")
    run, record = prepare(pool, images, target, rule, day, source=folder)
    with store.running(run.folder):  # musc clean waits
        refs = walk(run, lambda spec, plans: run_stage(spec, plans, day, "line", len(run.parts)))
    with warnings.catch_warnings(record=True) as caught:  # each said once, in the run's log
        warnings.simplefilter("always")
        try:
            scored = conclude(run, record, refs)
        finally:
            for warning in caught:
                _warn(str(warning.message))
    scored.skipped += [(path, why) for path, why in outside]
    publish(scored, folder)
    summary = scored.summary()
    not_scored = f"; {len(scored.skipped)} not scored" if scored.skipped else ""
    print(f"{day}: {summary['anomalous']} anomalous of {summary['count']} (threshold "
          f"{threshold_text(summary['threshold'], scored.rule)}){not_scored}; report "
          f"{(target / 'report.html')}")
    if summary["anomalous"] and review_wait_s > 0 and deployment.id:
        return ask_review(scored, folder, int(review_wait_s))
    return summary


__all__ = ["EVENT", "daily_folder_flow", "emit_verdicts", "pool_name", "publish", "review_form"]
