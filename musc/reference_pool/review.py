"""Inspectors' verdicts on a day's scored parts, without a server (``musc review DAY_FOLDER``).

A day's results folder (written by ``score_new_images``: ``musc score-new`` or the daily flow) holds
``scores.csv`` and ``day.json``, the day's record: its name, the pool it was scored against (path
and digest), the threshold and each part's content digest (SHA-256 of its file). A verdict is
``good`` (the part is fine: a false alarm when it was flagged) or ``defect`` (confirmed). It is
written twice:

* into ``scores.csv``, a ``verdict`` column (empty: not reviewed); a later verdict for a part
  replaces the earlier one there;
* appended to the verdict history, columns day, part, verdict, note, time (UTC, ISO 8601): beside
  the pool (``<pool>.verdicts.csv``) when the day records its pool, else ``verdicts.csv`` in the day
  folder. Every verdict is kept there, a part judged twice has two rows.

Both files are replaced whole (atomically, under a lock), so a reader never sees half of either.
Every name is checked before anything is written: a name that matches no scored part writes nothing.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..store import artifact_lock, atomic_write_text
from .pool import PoolError

VERDICTS = ("good", "defect")
HISTORY_COLUMNS = ("day", "part", "verdict", "note", "time")
SCORES_CSV = "scores.csv"
DAY_RECORD = "day.json"


class ReviewError(PoolError):
    """A review refused: one line naming the part, day or file; nothing was written."""


@dataclass
class Day:
    """A day's results folder: its scores table and its record (empty for a folder without day.json)."""
    folder: Path
    table: pd.DataFrame
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.record.get("day") or self.folder.name)

    @property
    def pool(self) -> Path | None:
        return Path(self.record["pool"]) if self.record.get("pool") else None

    def history_path(self) -> Path:
        """Beside the pool when the day records it, else in the day folder."""
        if self.pool is not None:
            return self.pool.with_name(self.pool.stem + ".verdicts.csv")
        return self.folder / "verdicts.csv"

    def flagged(self) -> pd.DataFrame:
        """The parts decided anomalous, highest score first."""
        return self.table[self.table["decision"] == "anomalous"].sort_values("score", ascending=False)

    def joining(self, include_normal: bool = False) -> list[str]:
        """The parts that may join a pool: confirmed good; with ``include_normal`` also those decided
        normal that no inspector called a defect."""
        table = self.table
        chosen = (table["verdict"] == "good") | (include_normal & (table["decision"] == "normal")
                                                 & (table["verdict"] != "defect"))
        return [str(p) for p in table.loc[chosen, "path"]]


def read_table(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"path": str, "verdict": str}, keep_default_na=False,
                        na_values={"score": ["", "nan", "NaN"]})
    if "verdict" not in table.columns:
        table["verdict"] = ""
    return table


def load_day(folder: str | Path) -> Day:
    """The day in ``folder``; ReviewError (one line) when it is not a day's results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReviewError(f"{folder}: no such day folder")
    scores = folder / SCORES_CSV
    if not scores.is_file():
        raise ReviewError(f"{folder}: no {SCORES_CSV} here (give the folder musc score-new or the daily flow "
                          "wrote a day's results to)")
    table = read_table(scores)
    missing = [c for c in ("path", "score", "decision") if c not in table.columns]
    if missing:
        raise ReviewError(f"{scores}: no column {missing[0]!r} (not a scores table of musc?)")
    record_path = folder / DAY_RECORD
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise ReviewError(f"{record_path}: not JSON ({error.msg}, line {error.lineno})") from None
    return Day(folder, table, record)


def pool_change(day: Day) -> str | None:
    """A line saying the day's pool changed (or is gone) since the day was scored, else None. The
    verdicts are about the parts, so they are recorded all the same."""
    if day.pool is None or not day.record.get("pool_digest"):
        return None
    from ..store import ArtifactError, open_artifact
    try:
        digest = open_artifact(day.pool, "pool").digest
    except ArtifactError:
        return f"the pool {day.pool} that {day.name} was scored against is gone or unreadable"
    if digest != day.record["pool_digest"]:
        return (f"the pool {day.pool} changed since {day.name} was scored (digest {digest[:12]}, then "
                f"{day.record['pool_digest'][:12]}): the scores are those of the pool of then")
    return None


def load_day_record(folder: str | Path) -> dict[str, Any]:
    """The day's record as written (an OSError or ValueError when it is missing or unreadable)."""
    record = json.loads((Path(folder) / DAY_RECORD).read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{Path(folder) / DAY_RECORD}: not a record")
    return record


def write_day_record(folder: str | Path, record: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / DAY_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")


def resolve(day: Day, name: str) -> str:
    """The scored part a name means: its path as in scores.csv, the same file by another path, or a
    file name (or name without suffix) only one scored part has."""
    paths = [str(p) for p in day.table["path"]]
    if name in paths:
        return name
    target = Path(name).expanduser()
    same = [p for p in paths if target.exists() and Path(p).exists() and Path(p).resolve() == target.resolve()]
    if not same:
        same = [p for p in paths if Path(p).name == name] or [p for p in paths if Path(p).stem == name]
    if len(same) == 1:
        return same[0]
    if same:
        raise ReviewError(f"{name}: {len(same)} parts of {day.name} have this name ({same[0]}, {same[1]}, ...); "
                          "give the path as in scores.csv")
    raise ReviewError(f"{name}: no part of that name was scored on {day.name} ({day.folder / SCORES_CSV})")


def record_verdicts(folder: str | Path, good: Sequence[str] = (), defect: Sequence[str] = (), note: str = "",
                    when: datetime | None = None) -> tuple[Day, list[tuple[str, str]]]:
    """Record the verdicts: checked first (every name a scored part, none both good and defect),
    then the history, then scores.csv. Returns the day as now written and (part, verdict) pairs."""
    day = load_day(folder)
    chosen: dict[str, str] = {}
    for verdict, names in (("good", good), ("defect", defect)):
        for name in names:
            part = resolve(day, name)
            if chosen.get(part, verdict) != verdict:
                raise ReviewError(f"{name}: given both --good and --defect; one verdict per part in a call")
            chosen[part] = verdict
    if not chosen:
        return day, []
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    history = day.history_path()
    rows = pd.DataFrame([{"day": day.name, "part": part, "verdict": verdict, "note": note, "time": stamp}
                         for part, verdict in chosen.items()], columns=list(HISTORY_COLUMNS))
    with artifact_lock(history):  # two inspectors at once: neither loses the other's rows
        if history.is_file():
            rows = pd.concat([pd.read_csv(history, dtype=str, keep_default_na=False), rows], ignore_index=True)
        atomic_write_text(history, _csv(rows))
    scores = day.folder / SCORES_CSV
    with artifact_lock(scores):
        table = read_table(scores)  # as it is now (another review may have written since)
        for part, verdict in chosen.items():
            table.loc[table["path"] == part, "verdict"] = verdict
        atomic_write_text(scores, _csv(table))
    day.table = table
    return day, list(chosen.items())


def _csv(table: pd.DataFrame) -> str:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue()
