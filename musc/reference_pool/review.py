"""Inspectors' verdicts on a day's scored parts (``musc review DAY``, the daily run's review form).

A verdict is given on a part (the content the day saw: its SHA-256), named by the path it was seen
under, its file name, or its identity; it is recorded in the verdict history of the pool the day
was scored against (``verdicts``: by the pool's identity, appended, never replayed by position),
with the reviewer and a note of its own. Then the pool follows the verdicts (a part confirmed
defective that had joined the pool leaves it, named), and the day's outputs (scores.csv, report,
trend) are drawn again. Every name is checked before anything is written: a name that matches no
scored part, or a pool that is not the day's, writes nothing.
"""
from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from ..store import ArtifactError, check_writable
from .day import DayError, DayRecord, DayView, load_day, view, write_views
from .pool import PoolFile, open_pool
from .verdicts import Verdict, append, verdict_history_path


class ReviewError(DayError):
    """A review refused: one line naming the part, day or file; nothing was written."""


@dataclass
class Review:
    """What a review did: the day as it stands now, the verdicts recorded (a verdict equal to the
    part's standing one is not recorded again), and the pool images that left the pool with a
    defect verdict."""
    day: DayView
    recorded: list[Verdict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    history: Path | None = None


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def resolve(record: DayRecord, name: str) -> tuple[str, str]:
    """(part, name) of the scored part a name means: the path it was seen under, its identity (at
    least 8 hex digits of its SHA-256), the same file by another path, or a file name (or name
    without suffix) only one scored part has. ReviewError naming the day when it means none, or
    several (a camera writing one path again and again: give the identity)."""
    scored = [seen for seen in record.seen if seen["part"] in record.parts]

    def one(found: list[dict], how: str) -> tuple[str, str] | None:
        parts = {seen["part"] for seen in found}
        if len(parts) == 1:
            return found[0]["part"], found[0]["name"]
        if parts:
            shown = ", ".join(sorted(part[:12] for part in parts))
            raise ReviewError(f"{name}: {len(parts)} parts of {record.day} {how} ({shown}); name one by its "
                              "identity (at least 8 hex digits, as scores.csv's part column shows)")
        return None

    for found, how in (([s for s in scored if s["name"] == name], "were seen at this path"),
                       ([s for s in scored if re.fullmatch(r"[0-9a-f]{8,64}", name) and s["part"].startswith(name)],
                        "have an identity starting so")):
        chosen = one(found, how)
        if chosen:
            return chosen
    target = Path(name).expanduser()
    if target.exists():
        same = [s for s in scored if (seen := record.file_of(s["name"])).exists() and seen.resolve() == target.resolve()]
        chosen = one(same, "were seen at this file")
        if chosen:
            return chosen
    for key in (lambda s: Path(s["name"]).name, lambda s: Path(s["name"]).stem):
        chosen = one([s for s in scored if key(s) == name], "have this name")
        if chosen:
            return chosen
    raise ReviewError(f"{name}: no part of that name was scored on {record.day} ({record.folder})")


def day_pool(record: DayRecord, pool: str | Path | None = None) -> PoolFile:
    """The pool a day was scored against: at the path the day records, or ``pool`` (the same pool,
    moved or copied); ReviewError when it is not there or is another pool (another identity)."""
    path = Path(pool) if pool is not None else record.pool_file
    try:
        found = open_pool(path)
    except ArtifactError as error:
        hint = "" if pool is not None else "; give --pool POOL (the same pool, moved)"
        raise ReviewError(f"{record.day}: the pool it was scored against is not readable at {path} "
                          f"({str(error).split(': ', 1)[-1]}){hint}") from None
    if found.id != record.pool["id"]:
        raise ReviewError(f"{path}: not the pool {record.day} was scored against (identity {found.id[:12]}, the "
                          f"day's {record.pool['id'][:12]}); its verdicts belong to that pool")
    return found


def record_verdicts(folder: str | Path, good: Sequence[str] = (), defect: Sequence[str] = (), note: str = "",
                    reviewer: str | None = None, notes: Mapping[str, str] | None = None,
                    pool: str | Path | None = None, when: datetime | None = None) -> Review:
    """Record verdicts on a day's parts: each name resolved first (``resolve``; none both good and
    defect), then appended to the pool's verdict history (``note`` for each, or ``notes[name]``),
    then the parts confirmed defective that are in the pool leave it, then the day's outputs are
    drawn again. Returns what was done."""
    from .additions import remove_from_pool
    from .line import day_lock
    record = load_day(folder)
    chosen: dict[str, tuple[str, str, str]] = {}
    for verdict, names in (("good", good), ("defect", defect)):
        for name in names:
            part, seen = resolve(record, name)
            if part in chosen and chosen[part][1] != verdict:
                raise ReviewError(f"{name}: given both --good and --defect; one verdict per part in a call")
            chosen[part] = (seen, verdict, (notes or {}).get(name, note))
    found = day_pool(record, pool)
    history = verdict_history_path(found.path)
    if not chosen:
        return Review(view(record), history=history)
    # nothing recorded unless all of it can be: the verdicts and the pool beside the pool, the
    # day's outputs in its folder (a read-only one refused now, not after the pool changed)
    check_writable(found.path.parent, "verdicts", "the verdicts are kept beside the pool: make its folder "
                                                  "writable, or copy the pool with its files elsewhere and pass --pool")
    check_writable(record.folder, "review", "the day's outputs are drawn again with the verdicts: make the "
                                            "day's folder writable")
    who = default_reviewer() if reviewer is None else reviewer
    today = view(record)
    scored = {row["part"]: row for row in today.rows}
    written = append(history, [Verdict(found.id, record.day, part, seen, verdict, who, text,
                                       scored[part]["score"], scored[part]["decision"])
                               for part, (seen, verdict, text) in chosen.items()], when)
    confirmed = [v.part for v in written if v.verdict == "defect"]
    removed = remove_from_pool(found.path, confirmed, f"confirmed defective on {record.day}") if confirmed else []
    with day_lock(record.folder):
        now = view(load_day(folder))
        write_views(now)
    return Review(now, written, removed, history)
