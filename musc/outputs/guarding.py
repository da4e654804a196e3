"""The systematic-defect guard in a category's reports (``musc run --reference POOL``).

The guard (musc/reference_pool/guard.py) scores every image of a run against a reference pool
alone; its record ``guard.json`` in the report folder (the pool, its threshold and rule, each
image's pool score and decision) is what the reports read: per_image.csv gets the columns
``pool_score``, ``pool_decision`` and ``guard`` (``GUARD_MARK`` where the pool flags an image the
batch calls normal), the gallery marks those images, and when several are marked a warning names
them. A report rebuilt later (``musc report``) keeps the marks: the record stays beside it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluation import ANOMALOUS, NORMAL
from ..store.catalog import REPORT

GUARD_FILE = REPORT.guard
GUARD_MARK = "pool flags, batch does not"
GUARD_COLUMNS = ("pool_score", "pool_decision", "guard")


def guard_warning(marked: list[str]) -> str | None:
    """The warning when several images are marked (None for fewer than two)."""
    if len(marked) < 2:
        return None
    return (f"{len(marked)} images are flagged by the reference pool but called normal by the batch: "
            f"{', '.join(marked)}. The batch cannot see a defect shared by a large share of its images "
            "(mutual scoring: such parts find similar patches in each other and look normal); check them "
            "for a systematic defect.")


def read_guard(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / GUARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_guard(folder: str | Path, record: dict[str, Any]) -> bool:
    """Write the record (its guard artifact named from the folder: ``store.naming.link``); False when
    the folder already holds the same one (nothing to redraw)."""
    from ..store import atomic_write_text
    from ..store.naming import link
    if record.get("artifact") and Path(record["artifact"]).is_absolute():
        record = {**record, "artifact": link(record["artifact"], folder)}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    path = Path(folder) / GUARD_FILE
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def drop_guard(folder: str | Path) -> bool:
    """Remove a report folder's guard record; False when it held none."""
    path = Path(folder) / GUARD_FILE
    if not path.is_file():
        return False
    path.unlink()
    return True


def with_guard(per_image: pd.DataFrame, record: dict[str, Any] | None) -> pd.DataFrame:
    """The per-image table with the guard's columns (unchanged without a record)."""
    if record is None:
        return per_image
    table = per_image.copy()
    images = record["images"]
    table["pool_score"] = [images.get(str(n), {}).get("pool_score", float("nan")) for n in table["name"]]
    table["pool_decision"] = [images.get(str(n), {}).get("pool_decision", "") for n in table["name"]]
    table["guard"] = [GUARD_MARK if p == ANOMALOUS and d == NORMAL else ""
                      for p, d in zip(table["pool_decision"], table["decision"])]
    return table


def marked(per_image: pd.DataFrame) -> list[str]:
    """The images the pool flags and the batch does not, highest pool score first."""
    if "guard" not in per_image.columns:
        return []
    chosen = per_image[per_image["guard"] == GUARD_MARK].sort_values("pool_score", ascending=False, kind="stable")
    return [str(n) for n in chosen["name"]]


def guard_lines(record: dict[str, Any] | None, per_image: pd.DataFrame) -> list[str]:
    """What the report says of the guard: the pool and its threshold, how many are marked, the
    warning when several are."""
    if record is None:
        return []
    names = marked(per_image)
    flagged = sum(v["pool_decision"] == ANOMALOUS for v in record["images"].values())
    lines = [f"reference pool {record['pool']} ({record['pool_size']} images): threshold "
             f"{record['threshold']:.6g} ({record['rule']}); {flagged} image(s) flagged against the pool alone, "
             f"{len(names)} of them called normal by the batch (marked '{GUARD_MARK}')"]
    warning = guard_warning(names)
    return lines + ([f"WARNING: {warning}"] if warning else [])
