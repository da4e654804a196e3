"""A production day: its summary, the history of days kept beside the pool, the trend plot, heat-map
thumbnails and the day's report. Plain files; the daily-folder flow (flows/daily.py) publishes them
to Prefect."""
from __future__ import annotations

import functools
import warnings
from datetime import date, datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..outputs.evaluation import ANOMALOUS, threshold_text
from ..inputs.config import ConfigError
from ..inputs.datasets import DatasetError
from ..inputs.images import IMAGE_SUFFIXES
from ..outputs.figures import heat_colours, new_figure
from ..outputs.gallery import data_uri, png_data_uri
from ..outputs.html import markdown_page
from ..store import artifact_lock, atomic_output, atomic_write_text
from ..store.catalog import DAY
from .errors import HistoryError

HISTORY_COLUMNS = ("day", "count", "anomalous", "anomalous_rate", "score_q50", "score_q90", "score_q99",
                   "score_max", "threshold", "pool_size")


def parse_day(day: Any) -> date:
    """A day 'YYYY-MM-DD' (2026-11-8 too) as a date; ConfigError naming ``day`` otherwise."""
    try:
        return datetime.strptime(str(day).strip(), "%Y-%m-%d").date()
    except ValueError:
        raise ConfigError(f"day: expected a date YYYY-MM-DD, got {str(day)[:40]!r}") from None


def day_images(root: str | Path, day: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(images, skipped) of the folder ``root/day``: image files, in name order (none when the
    folder is missing or empty); skipped: entries that lead out of ``root`` (symlinks) or nowhere (a
    symlink loop, a broken link), never read, each with why. DatasetError when the day's folder
    itself leads out of the root."""
    parse_day(day)
    root = Path(root)
    folder = root / day
    if not folder.is_dir():
        return [], []
    top = root.resolve()
    if not folder.resolve().is_relative_to(top):
        raise DatasetError(f"root: {folder} leads out of {root} (a symlink to {folder.resolve()}); refused")
    images, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError) as error:  # a loop of symlinks, a link to nothing
            why = "a symlink loop" if isinstance(error, RuntimeError) or "loop" in str(error).lower() else \
                f"cannot be read ({getattr(error, 'strerror', None) or error})"
            skipped.append((str(entry), f"{entry}: {why}; not scored"))
            continue
        if not target.is_relative_to(top):
            skipped.append((str(entry), f"{entry}: leads out of {root} (a symlink); not scored"))
        elif target.is_file():
            images.append(str(entry))
    return images, skipped


def history_path(pool_path: str | Path) -> Path:
    """The history of daily summaries, beside the pool's real file: <pool>.history.csv."""
    pool_path = Path(pool_path).resolve()
    return pool_path.with_name(pool_path.stem + ".history.csv")


def day_summary(day: str, rows: Sequence[dict], threshold: float, pool_size: int) -> dict[str, Any]:
    scores = np.array([row["score"] for row in rows], dtype=np.float64)
    anomalous = sum(row["decision"] == ANOMALOUS for row in rows)
    return {"day": day, "count": len(rows), "anomalous": int(anomalous),
            "anomalous_rate": anomalous / len(rows) if rows else 0.0,
            **{f"score_q{int(q * 100)}": float(np.quantile(scores, q)) if rows else float("nan")
               for q in (0.5, 0.9, 0.99)},
            "score_max": float(scores.max()) if rows else float("nan"), "threshold": float(threshold),
            "pool_size": int(pool_size)}


def read_history(path: str | Path) -> pd.DataFrame:
    """The history of daily summaries (none yet: empty), sorted by day; HistoryError naming the
    file when it is not one. An empty file holds nothing to lose: a warning, and a new history."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        if path.is_file():
            warnings.warn(f"{path}: empty history file; starting a new history", stacklevel=2)
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    try:
        history = pd.read_csv(path, dtype={"day": str})
    except pd.errors.EmptyDataError:
        raise HistoryError(f"{path}: a history file without a header line; move it away to start a new "
                           "history") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise HistoryError(f"{path}: not a readable history of daily summaries "
                           f"({str(error).splitlines()[0][:120]}); move it away to start a new history") from None
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise HistoryError(f"{path}: not a history of daily summaries (no column {missing[0]!r}); move it away "
                           "to start a new history")
    for line, value in enumerate(history["day"], start=2):
        try:
            parse_day(value)
        except ConfigError:
            raise HistoryError(f"{path}: line {line}: day {str(value)[:40]!r} is not a date YYYY-MM-DD") from None
    return _by_day(history)


def _by_day(history: pd.DataFrame) -> pd.DataFrame:
    """Sorted by date, not text: 2026-11-10 after 2026-11-8."""
    return history.sort_values("day", key=lambda days: days.map(parse_day), kind="stable").reset_index(drop=True)


def append_history(path: str | Path, summary: dict[str, Any]) -> pd.DataFrame:
    """Add the day's summary to the history (a rerun of a day replaces that day's row); sorted by day.
    Written atomically: a full disk leaves the history as it was, and no temporary file."""
    path = Path(path)
    today = parse_day(summary["day"])
    with artifact_lock(path):  # two days' runs at once: neither loses the other's row
        history = read_history(path)
        history = history[[parse_day(d) != today for d in history["day"]]]
        row = pd.DataFrame([summary], columns=HISTORY_COLUMNS)
        history = _by_day(row if history.empty else pd.concat([history, row], ignore_index=True))
        with atomic_output(path) as scratch:  # a full disk: one line naming the folder, no temporary file left
            history.to_csv(scratch, index=False)
    return history


REVIEW_COLUMNS = ("parts", "flagged", "confirmed", "dismissed", "false_alarm_rate")


def review_counts(history: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """The history of days with what the inspectors saw, per day: parts (scored), flagged (decided
    anomalous), confirmed and dismissed (flagged parts whose latest verdict that day is defect or
    good: ``verdicts.per_day``) and the false-alarm rate the inspectors see, dismissed / flagged
    (NaN on a day without flagged parts)."""
    table = history.copy()
    table["parts"] = table["count"].astype(int)
    table["flagged"] = table["anomalous"].astype(int)
    flagged = verdicts[verdicts["decision"] == ANOMALOUS] if len(verdicts) else verdicts
    for column, verdict in (("confirmed", "defect"), ("dismissed", "good")):
        per_day = flagged[flagged["verdict"] == verdict].groupby("day").size() if len(flagged) else {}
        table[column] = [int(per_day.get(str(day), 0)) for day in table["day"]]
    table["false_alarm_rate"] = [d / f if f else float("nan") for d, f in zip(table["dismissed"], table["flagged"])]
    return table


def verdicts_by_day_markdown(history: pd.DataFrame) -> list[str]:
    """A Markdown table of the days' reviews (``review_counts``), newest day first; none without reviews."""
    if "confirmed" not in history.columns or history.empty:
        return []
    lines = ["| day | parts | flagged | confirmed | dismissed | false alarms seen |", "|---|---|---|---|---|---|"]
    for row in history.iloc[::-1].itertuples():
        rate = "" if pd.isna(row.false_alarm_rate) else f"{row.false_alarm_rate:.0%}"
        lines.append(f"| {row.day} | {row.parts} | {row.flagged} | {row.confirmed} | {row.dismissed} | {rate} |")
    return lines


def plot_trends(history: pd.DataFrame, path: str | Path) -> str:
    """Daily anomalous rate (left) and score quantiles with the threshold (middle); with the review
    counts (``review_counts``), per day the flagged, confirmed and dismissed parts (right)."""
    days = list(history["day"])
    reviews = "confirmed" in history.columns
    fig = new_figure(13 if reviews else 9, 3.2)
    axes = fig.subplots(1, 3 if reviews else 2)
    rate, scores = axes[0], axes[1]
    rate.plot(days, history["anomalous_rate"] * 100, marker="o")
    rate.set_ylabel("anomalous parts (%)")
    rate.set_title("daily anomalous rate", fontsize=9)
    for column, style in (("score_q50", "-o"), ("score_q90", "-s"), ("score_q99", "-^"), ("threshold", "--")):
        scores.plot(days, history[column], style, label=column.replace("score_", ""))
    scores.set_title("daily score quantiles", fontsize=9)
    scores.legend(fontsize=7)
    if reviews:
        counts = axes[2]
        where = np.arange(len(days))
        for offset, column, colour in ((-0.27, "flagged", "#e8a33d"), (0.0, "confirmed", "#c33"),
                                       (0.27, "dismissed", "#397")):
            counts.bar(where + offset, history[column], width=0.27, color=colour, label=column)
        counts.set_xticks(where, [f"{day} ({parts} parts)" for day, parts in zip(days, history["parts"])])
        counts.set_ylabel("parts")
        counts.yaxis.get_major_locator().set_params(integer=True)
        flagged, dismissed = int(history["flagged"].sum()), int(history["dismissed"].sum())
        counts.set_title(f"inspectors' verdicts: {dismissed} of {flagged} flagged dismissed"
                         + (f" ({dismissed / flagged:.0%} false alarms)" if flagged else ""), fontsize=9)
        counts.legend(fontsize=7)
    for axis in axes:
        axis.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    with atomic_output(path) as scratch:
        fig.savefig(scratch, dpi=80, format="png")
    return str(path)


def thumbnail(anomaly_map: np.ndarray, size: int = 64, vmin: float | None = None, vmax: float | None = None) -> str:
    """A small heat-map PNG as a data URI (for Markdown where the UI shows it): ``size`` pixels on its
    longer side (a part's shape kept), coloured over [vmin, vmax] (the day's one scale; default 0 and
    the map's maximum)."""
    from PIL import Image
    values = np.asarray(anomaly_map, dtype=np.float64)
    low = 0.0 if vmin is None else float(vmin)
    top = vmax if vmax is not None else (values.max() or 1.0)
    height, width = values.shape
    shape = (size, max(1, round(size * height / width))) if width >= height else (max(1, round(size * width / height)), size)
    return png_data_uri(Image.fromarray(heat_colours(values, low, top)).resize(shape))


def ordered(rows: Sequence[dict]) -> list[dict]:
    """Anomalous parts first, then by score, highest first."""
    return sorted(rows, key=lambda row: (row["decision"] != ANOMALOUS, -row["score"]))


SCORE_DECIMALS = 4  # how a part's score reads in the UI and the event (scores.csv keeps it whole)


def part_name(path: str | Path, folder: str | Path) -> str:
    """A file of the day (a row's ``file`` or ``map_file``) as people read it: relative to the day's
    folder; a file elsewhere by its name."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name


def table_rows(rows: Sequence[dict], folder: str | Path) -> list[dict[str, str]]:
    """The day's table at a glance, anomalous parts first: part and map relative to the day's
    folder, the score with 4 decimals, the decision and the inspectors' verdict."""
    return [{"part": part_name(row["file"], folder), "score": f"{row['score']:.{SCORE_DECIMALS}f}",
             "decision": row["decision"], "verdict": row.get("verdict") or "",
             "map": part_name(row["map_file"], folder)} for row in ordered(rows)]


def readable(summary: dict[str, Any]) -> dict[str, Any]:
    """A day's summary rounded for reading (in an event, a message): the threshold to 6
    significant digits (so it still tells the scores beside it apart), other fractions and scores
    to 4 decimals; counts as they are."""
    return {key: (float(f"{value:.6g}") if key == "threshold" else round(value, SCORE_DECIMALS))
            if isinstance(value, float) else value for key, value in summary.items()}


def anomalous_parts(rows: Sequence[dict], folder: str | Path) -> list[dict[str, Any]]:
    """The parts judged anomalous, for the event: the part's name (relative to the day's folder), its
    file and map as scores.csv names them, its score with 4 decimals; highest score first."""
    return [{"part": part_name(row["file"], folder), "path": str(row["path"]),
             "score": round(float(row["score"]), SCORE_DECIMALS), "map_png": str(row["map_png"])}
            for row in ordered(rows) if row["decision"] == ANOMALOUS]


def not_scored_markdown(skipped: Sequence[tuple[str, str]], folder: str | Path) -> list[str]:
    """The day's parts that could not be scored (unreadable, or not of a tiled pool's size), each with why."""
    if not skipped:
        return []
    return ["## Not scored", "", "| part | why |", "|---|---|",
            *(f"| {path} | {why.removeprefix(f'{path}: ')} |" for path, why in skipped), ""]


def write_day_outputs(day) -> Path:
    """A daily run's day (a ``DayView``): its summary in the history of days beside the pool (a rerun
    of the day replaces its row), the trend plot with the inspectors' verdicts per day, and the
    report. Returns report.md."""
    from .verdicts import per_day, verdict_history_path
    record = day.record
    summary = day.summary()
    history = review_counts(append_history(history_path(record.pool_file), summary),
                            per_day(verdict_history_path(record.pool_file), record.pool["id"]))
    trend = plot_trends(history, record.folder / DAY.trend)
    return write_day_report(record.folder, summary, day.rows, day.rule, trend, history, day.skipped)


def write_day_report(folder: str | Path, summary: dict[str, Any], rows: Sequence[dict], rule: str,
                     trend_png: str, history: pd.DataFrame | None = None,
                     skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """report.md (+ report.html) in the day's output folder: the counts, the trend plot, the days'
    reviews (``history`` with ``review_counts``), the parts, and those not scored (``skipped``:
    (path, why))."""
    folder = Path(folder)
    lines = [f"# Parts of {summary['day']}", "",
             f"{summary['count']} part(s) scored against a pool of {summary['pool_size']}; "
             f"**{summary['anomalous']} anomalous** (threshold {summary['threshold']:.6g}, {rule})"
             + (f"; **{len(skipped)} not scored** (below)." if skipped else "."), "",
             *not_scored_markdown(skipped, folder),
             "## Trend", "", f"![trend]({Path(trend_png).name})", "",
             *(["## Inspectors' verdicts by day", "", *verdicts_by_day_markdown(history), ""] if history is not None and "confirmed" in history.columns
               and history[["confirmed", "dismissed"]].to_numpy().any() else []),
             "## Parts (anomalous first)", "", "The heat maps share one colour scale for the day.", "",
             "| path | score | decision | verdict | map |", "|---|---|---|---|---|"]
    for row in ordered(rows):  # the report lies beside scores.csv: its maps as scores.csv names them
        lines.append(f"| {row['path']} | {row['score']:.4f} | {row['decision']} | {row.get('verdict') or ''} | "
                     f"![map]({row['map_png']}) |")
    report = folder / DAY.report
    atomic_write_text(report, "\n".join(lines) + "\n")
    markdown_page(report, f"Parts of {summary['day']}")
    return report


OVERLAY_PX = 320  # a flagged part's overlay (picture | heat map, some 160 px each) inside Prefect markdown
TREND_PX = 720
REVIEW_PARTS = 24  # flagged parts a review form holds, highest score first; musc review takes any


def overlay_uri(row: dict) -> str:
    """A part's overlay PNG (maps/) scaled down, as a palette PNG data URI: read and encoded once per
    process while the file stays the same (the day's artifact and its review form share it)."""
    stat = Path(row["map_file"]).stat()
    return _overlay_uri(str(row["map_file"]), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _overlay_uri(path: str, inode: int, modified: int, size: int) -> str:
    return data_uri(path, OVERLAY_PX, colors=256)


def maps_markdown(summary: dict[str, Any], rows: Sequence[dict], rule: str, folder: str | Path,
                  trend_png: str | Path | None = None, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The day at a glance (the daily maps artifact): each flagged part with its picture and heat
    map, score, threshold and decision; the trend plot; then the other parts' small heat maps
    (``row["thumbnail"]``, where a row has one). Pictures travel as data URIs: the UI cannot read the
    worker's disk."""
    threshold = threshold_text(summary["threshold"], rule)
    lines = [f"# Parts of {summary['day']}: {summary['anomalous']} anomalous of {summary['count']}", "",
             f"Anomalous at score >= {threshold}. The heat maps share one colour scale for the day.", "",
             *not_scored_markdown(skipped, folder)]
    flagged = flagged_for_review(rows)  # the pictured ones; the rest keep their small heat map below
    if flagged:
        lines += ["## Flagged parts", "", "| part | score | threshold | decision | picture and heat map |",
                  "|---|---|---|---|---|"]
        lines += [f"| {part_name(row['file'], folder)} | **{row['score']:.{SCORE_DECIMALS}f}** | "
                  f"{summary['threshold']:.6g} | **{ANOMALOUS}** | ![{part_name(row['file'], folder)}]"
                  f"({overlay_uri(row)}) |" for row in flagged]
        lines.append("")
    if trend_png and Path(trend_png).is_file():
        lines += ["## Trend", "", f"![trend]({data_uri(trend_png, TREND_PX, colors=256)})", ""]
    shown = {id(row) for row in flagged}
    others = [row for row in ordered(rows) if id(row) not in shown and "thumbnail" in row]
    if others:
        lines += ["## Other parts", "", "| part | score | decision | heat map |", "|---|---|---|---|"]
        lines += [f"| {part_name(row['file'], folder)} | {row['score']:.{SCORE_DECIMALS}f} | {row['decision']} | "
                  f"![map]({row['thumbnail']}) |" for row in others]
    return "\n".join(lines) + "\n"


def flagged_for_review(rows: Sequence[dict]) -> list[dict]:
    """The flagged parts a review form asks about: highest score first, at most ``REVIEW_PARTS``."""
    return [row for row in ordered(rows) if row["decision"] == ANOMALOUS][:REVIEW_PARTS]


def review_markdown(summary: dict[str, Any], asked: Sequence[dict], flagged: int, rule: str, folder: str | Path,
                    results: str | Path) -> str:
    """The review form's description: each part it asks about (``asked``, in the order of the form's
    fields) with its score and its picture and heat map; how many flagged parts the form leaves out
    (``flagged``: the day's flagged parts; those with a verdict already are not asked again)."""
    lines = [f"# Review of {summary['day']}: {flagged} flagged part(s)", "",
             f"Anomalous at score >= {threshold_text(summary['threshold'], rule)}. For each part choose "
             "**defect** (confirmed) or **good** (a false alarm), with a note of its own if you like; a part "
             "left *not reviewed* records nothing. The verdicts go to the pool's verdict history, as "
             f"`musc review {results}` records them.", ""]
    for i, row in enumerate(asked, 1):  # one below the other: the form's dialog is narrow
        name = part_name(row["file"], folder)
        lines += [f"**{i}. {name}**: score **{row['score']:.{SCORE_DECIMALS}f}**", "", f"![{name}]({overlay_uri(row)})", ""]
    if flagged > len(asked):
        lines += ["", f"{flagged - len(asked)} more flagged part(s), reviewed already or of lower scores: "
                      f"`musc review {results}`."]
    return "\n".join(lines) + "\n"