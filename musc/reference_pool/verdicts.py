"""Inspectors' verdicts, recorded by identity: the verdict history of a pool.

A verdict is a record (pool, day, part, name, verdict, reviewer, note, time, score, decision):
``pool`` the pool's identity (``pool_id``, not its path), ``part`` the SHA-256 of the part's image
file, ``name`` where it was seen (relative to the day's folder); ``good`` (the part is fine: a false
alarm when it was flagged) or ``defect`` (confirmed). Records are appended to the history beside the
pool's real file (``<pool>.verdicts.csv``; a pool reached through a symlink keeps its history beside
its target), never matched by a path or a position; the latest record of a part stands. A record
equal to the part's standing one (a form's answer replayed by a retry) is not written again.

The history serves the pool's identity only: a pool made anew at the same path (another identity)
learns nothing from its predecessor's verdicts, and a verdict's part joins or leaves only the pool
it was given against.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..store import artifact_lock, atomic_write_text
from .errors import HistoryError, PoolError
from .rule import Evidence

VERDICTS = ("good", "defect")
COLUMNS = ("pool_id", "day", "part", "name", "verdict", "reviewer", "note", "time", "score", "decision")
MAX_HISTORY_BYTES = 1 << 30  # a history of verdicts grows by some 200 bytes a verdict


@dataclass(frozen=True)
class Verdict:
    """One inspector's verdict on one part (see the module's docstring)."""
    pool_id: str
    day: str
    part: str
    name: str
    verdict: str
    reviewer: str = ""
    note: str = ""
    score: float = float("nan")
    decision: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise PoolError(f"verdict: expected good or defect, got {self.verdict!r}")


def verdict_history_path(pool: str | Path) -> Path:
    """The verdict history of a pool: ``<pool>.verdicts.csv`` beside the pool's real file."""
    real = Path(pool).resolve()
    return real.with_name(real.stem + ".verdicts.csv")


def read_records(path: str | Path) -> pd.DataFrame:
    """Every record of a history file (none: empty), in the order written; HistoryError naming the
    file when it is not a verdict history. Records of an earlier format (no pool identity) belong
    to no pool of this version: they are kept in the file and never used."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(COLUMNS))
    if path.stat().st_size > MAX_HISTORY_BYTES:
        raise HistoryError(f"{path}: larger than {MAX_HISTORY_BYTES >> 20} MiB; not a verdict history")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise HistoryError(f"{path}: not a readable verdict history ({str(error).splitlines()[0][:120]}); "
                           "move it away to start a new one") from None
    if "verdict" not in table.columns:
        raise HistoryError(f"{path}: not a verdict history (no column 'verdict'); move it away to start a new one")
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = ""
    return table


def standing(path: str | Path, pool_id: str) -> pd.DataFrame:
    """The standing verdict of each part reviewed against the pool ``pool_id``: its latest record
    (columns as ``COLUMNS``, ``score`` a number, NaN where none was recorded)."""
    table = read_records(path)
    table = table[table["pool_id"] == pool_id].drop_duplicates("part", keep="last").reset_index(drop=True)
    table["score"] = pd.to_numeric(table["score"], errors="coerce")
    return table


def per_day(path: str | Path, pool_id: str) -> pd.DataFrame:
    """The latest verdict of each part on each day it was reviewed against the pool ``pool_id``
    (what the days' review counts show)."""
    table = read_records(path)
    table = table[table["pool_id"] == pool_id]
    return table.drop_duplicates(["day", "part"], keep="last").reset_index(drop=True)


def evidence(pool) -> Evidence:
    """What the reviewed rule learns from for a pool (``PoolFile``): the standing verdict of each
    part reviewed against it, with its score."""
    path = verdict_history_path(pool.path)
    table = standing(path, pool.id)
    table = table[table["score"].notna()]
    return Evidence(str(path), tuple(float(s) for s in table["score"]),
                    tuple(int(v == "defect") for v in table["verdict"]))


def append(path: str | Path, verdicts: Sequence[Verdict], when: datetime | None = None) -> list[Verdict]:
    """Append the verdicts to the history (under its lock, the file replaced atomically: a reader
    sees all of it or none); a verdict that repeats its part's standing record (verdict, note and
    reviewer alike) is not written again. Returns those written."""
    path = Path(path)
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    with artifact_lock(path):  # two inspectors at once: neither loses the other's records
        table = read_records(path)
        latest = {(row.pool_id, row.part): row for row in table.drop_duplicates(["pool_id", "part"], keep="last")
                  .itertuples(index=False)}
        written = []
        for verdict in verdicts:
            before = latest.get((verdict.pool_id, verdict.part))
            if before is not None and (before.verdict, before.note, before.reviewer, before.day) == (
                    verdict.verdict, verdict.note, verdict.reviewer, verdict.day):
                continue
            written.append(verdict)
        if written:
            rows = pd.DataFrame([{**verdict.__dict__, "time": stamp,
                                  "score": "" if verdict.score != verdict.score else repr(float(verdict.score))}
                                 for verdict in written])
            table = pd.concat([table, rows.astype(str)], ignore_index=True)[
                [*COLUMNS, *[c for c in table.columns if c not in COLUMNS]]]
            buffer = io.StringIO()
            table.to_csv(buffer, index=False)
            atomic_write_text(path, buffer.getvalue())
    return written
