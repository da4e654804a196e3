"""A plain folder of images: every image below the root (a ``masks/`` folder and our own outputs
excluded), labels from an optional ``labels.csv`` (columns image,label), masks from
``masks/<stem>.png`` or ``masks/<stem>_mask.png``; one category, named after the folder."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ...errors import DatasetError
from ..images import IMAGE_SUFFIXES
from .common import Excluded, Sample, inside, warn_once
from .registry import Layout, register


def categories(root: Path, ours: Excluded) -> list[str]:
    return [root.resolve().name]


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return category or root.resolve().name or "root", _folder_samples(root, ours)


def _folder_samples(root: Path, ours: Excluded) -> list[Sample]:
    """Images anywhere below root (a ``masks/`` folder and our own outputs excluded); labels from
    ``labels.csv`` when present (columns image,label), masks from ``masks/<stem>.png`` or
    ``masks/<stem>_mask.png``."""
    labels: dict[str, int] = {}
    labels_file = root / "labels.csv"
    if labels_file.is_file():
        with labels_file.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's BOM is not a column name
            for line, row in enumerate(csv.DictReader(handle), start=2):
                value = str(row.get("label") or "").strip()
                if row.get("image") is None or value not in ("0", "1"):
                    raise DatasetError(f"{labels_file}: line {line} needs columns image,label with label 0 or 1"
                                       f"{f', got {value!r}' if value else ''}")
                labels[row["image"]] = int(value)
    masks_dir = root / "masks"
    samples = []
    for image in _folder_images(root, masks_dir, ours):
        name = image.relative_to(root).as_posix()
        mask = next((str(inside(root, c, "mask")) for c in (masks_dir / f"{image.stem}.png",
                                                              masks_dir / f"{image.stem}_mask.png")
                     if c.is_file()), None)
        label = labels.get(name)
        if label is None and labels_file.is_file():
            warn_once(f"{labels_file}: no label for {name}", root)
        defect = image.parent.name if image.parent != root else ""
        samples.append(Sample(str(inside(root, image, "image")), name, defect, label, mask))
    return samples


def _folder_images(root: Path, masks_dir: Path, ours: Excluded) -> list[Path]:
    """Image files below root, in sorted order, never entering ``masks/`` or a folder of ours."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if here / d != masks_dir and not ours(here / d)]
        found.extend(here / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and (here / f).is_file())
    return sorted(found)



register(Layout("folder", "nonzero", categories, samples, root_is_category=True))
