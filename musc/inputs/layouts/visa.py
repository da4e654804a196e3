"""VisA: the images and masks its split file lists (``split_csv/1cls.csv``: object, split, label,
image, mask), the test split of each object a category."""
from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DatasetError
from .common import Excluded, Sample, inside
from .registry import Layout, register


def _visa_rows(root: Path) -> list[dict[str, str]]:
    split = root / "split_csv" / "1cls.csv"
    if not split.is_file():
        raise DatasetError(f"root: VisA split file {split} not found")
    with split.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"object", "split", "label", "image", "mask"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetError(f"{split}: expected columns {', '.join(sorted(needed))}")
    return rows


def _visa_samples(root: Path, category: str | None) -> list[Sample]:
    rows = [r for r in _visa_rows(root) if r["object"] == category and r["split"] == "test"]
    samples = []
    for row in rows:
        image = inside(root, root / row["image"], "image")
        label = 0 if "Normal" in row["image"] else 1
        mask = str(inside(root, root / row["mask"], "mask")) if label and row["mask"] else None
        defect = "good" if label == 0 else "bad"
        samples.append(Sample(str(image), row["image"], defect, label, mask))
    return samples




def categories(root: Path, ours: Excluded) -> list[str]:
    return sorted({row["object"] for row in _visa_rows(root)})


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return str(category), _visa_samples(root, category)


# VisA keeps every non-zero mask pixel, as its own evaluation does; the paper's RsCIN windows for it
register(Layout("visa", "nonzero", categories, samples, k_list=(1, 8, 9)))
