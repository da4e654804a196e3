"""Each day's folder of new parts, scored against a reference pool: decisions, a report with the
trend of past days, a Prefect table artifact and an event that an Automation can notify on."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from musc.inputs.datasets import IMAGE_SUFFIXES
from musc.reference_pool import DecisionRule, score_new_images
from musc.reference_pool.daily import (append_history, day_summary, history_path, ordered, plot_trends, thumbnail,
                                       write_day_report)
from musc.stages.faults import fail_once_point
from tasks.publish import artifact_key
from tasks.publish import publish as publish_artifact

EVENT = "musc.daily.scored"
THUMBNAILS = 48  # parts shown with a heat-map thumbnail in the markdown artifact, anomalous first


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


def publish(day: str, pool: str, result: dict, summary: dict, report: Path) -> None:
    """The day's table artifact, its thumbnails (markdown) and the event."""
    name = artifact_key(Path(pool).stem).removeprefix("musc-")  # the pool's name in keys and events
    key = artifact_key("daily", name)
    rows = ordered(result["rows"])
    publish_artifact("table", key, [{k: row[k] for k in ("path", "score", "decision", "map_png")} for row in rows],
                     f"Parts of {day}: {summary['anomalous']} anomalous of {summary['count']} "
                     f"(threshold {summary['threshold']:.6g}); report {report}")
    lines = [f"# Parts of {day}: {summary['anomalous']} anomalous of {summary['count']}", "",
             "| part | score | decision | heat map |", "|---|---|---|---|"]
    lines += [f"| {row['path']} | {row['score']:.4f} | {row['decision']} | ![map]({row['thumbnail']}) |"
              for row in rows if "thumbnail" in row]
    publish_artifact("markdown", f"{key}-maps", "\n".join(lines), f"heat maps of {day}")
    anomalous = [{"path": row["path"], "score": row["score"], "map_png": row["map_png"]}
                 for row in rows if row["decision"] == "anomalous"]
    emit_event(event=EVENT,
               resource={"prefect.resource.id": f"musc.pool.{name}",
                         "prefect.resource.name": Path(pool).name, "musc.day": day,
                         "musc.anomalous": "true" if anomalous else "false"},
               payload={**summary, "anomalous_parts": anomalous, "report": str(report),
                        "scores_csv": str(report.parent / "scores.csv")})


@flow(name="musc-daily-folder", log_prints=True)
def daily_folder_flow(pool: str, root: str, day: str = "", out: str = "", false_alarm_rate: float = 0.01,
                      threshold: float | None = None, timezone: str = "UTC") -> dict:
    """Score every image of ``root/<day>`` against the pool (default day: the date of the run's
    scheduled start in ``timezone``, so a retry scores the same day). Decides with ``threshold``,
    or with a threshold calibrated on the pool at ``false_alarm_rate``. Writes scores.csv, maps and
    report.md into ``out`` (default <root>/<day>/musc), appends the day to the history beside the
    pool, publishes a table artifact and emits the ``musc.daily.scored`` event."""
    day = day or run_day(timezone)
    datetime.strptime(day, "%Y-%m-%d")  # a malformed day fails here, naming it
    folder = Path(root) / day
    if not folder.is_dir():
        raise FileNotFoundError(f"root: no folder {folder} for {day}")
    images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"root: no images in {folder} for {day}")
    fail_once_point("daily")
    target = Path(out or folder / "musc")
    result = score_day_task(pool, images, str(target), DecisionRule(threshold, false_alarm_rate), day)
    summary = day_summary(day, result["rows"], result["threshold"], result["pool_size"])
    history = append_history(history_path(pool), summary)
    trend = plot_trends(history, target / "trend.png")
    report = write_day_report(target, summary, result["rows"], result["rule"], trend)
    publish(day, pool, result, summary, report)
    print(f"{day}: {summary['anomalous']} anomalous of {summary['count']} (threshold {summary['threshold']:.6g}); "
          f"report {report}")
    return summary
