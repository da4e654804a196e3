"""VisA: the images and masks its split file lists (``split_csv/1cls.csv``: object, split, label,
image, mask), the test split of each object a category, each image labelled by the file's ``label``
column (normal, anomaly)."""
from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DatasetError
from .common import Excluded, Sample, inside, warn_once
from .registry import Layout, register

# the split file's label column: VisA's own words for a normal and an anomalous image
VISA_LABELS = {"normal": 0, "anomaly": 1}


def _visa_split(root: Path) -> Path:
    split = root / "split_csv" / "1cls.csv"
    if not split.is_file():
        raise DatasetError(f"root: VisA split file {split} not found")
    return split


def _visa_rows(split: Path) -> list[tuple[int, dict[str, str]]]:
    """The split file's rows, each with its line number in the file (the header is line 1)."""
    with split.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's BOM is not a column name
        reader = csv.DictReader(handle)
        rows = [(reader.line_num, row) for row in reader]
    needed = {"object", "split", "label", "image", "mask"}
    if not rows or not needed <= set(rows[0][1]):
        raise DatasetError(f"{split}: expected columns {', '.join(sorted(needed))}")
    return rows


def _visa_samples(root: Path, category: str | None) -> list[Sample]:
    """The test rows of one object, labelled by the label column, not by the folder an image lies in
    (a copy of VisA without its Normal/Anomaly folders is labelled the same)."""
    split = _visa_split(root)
    samples, missing = [], []
    for line, row in _visa_rows(split):
        if row["object"] != category or row["split"] != "test":
            continue
        value = (row["label"] or "").strip()
        label = VISA_LABELS.get(value.lower())
        if label is None:
            raise DatasetError(f"{split}: line {line} has label {value!r}, expected one of "
                               f"{', '.join(VISA_LABELS)} (image {row['image']})")
        image, mask_name = inside(root, root / row["image"], "image"), (row["mask"] or "").strip()
        mask = str(inside(root, root / mask_name, "mask")) if label and mask_name else None
        if label and mask is None:
            missing.append(row["image"])
        samples.append(Sample(str(image), row["image"], "bad" if label else "good", label, mask))
    if missing:
        warn_once(f"category {category!r}: {len(missing)} anomalous image(s) have no mask in {split.name} "
                  f"(first: {missing[0]}); pixel metrics leave them out", split)
    return samples


def categories(root: Path, ours: Excluded) -> list[str]:
    return sorted({row["object"] for _, row in _visa_rows(_visa_split(root))})


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return str(category), _visa_samples(root, category)


# VisA keeps every non-zero mask pixel, as its own evaluation does; the paper's RsCIN windows for it
register(Layout("visa", "nonzero", categories, samples, k_list=(1, 8, 9)))
