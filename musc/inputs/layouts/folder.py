"""A plain folder of images: every image below the root (a ``masks/`` folder and our own outputs
excluded), labels from an optional ``labels.csv`` (columns image,label), masks from ``masks/`` at
the image's path below the root (``masks/cam2/x.png`` or ``masks/cam2/x_mask.png`` for
``cam2/x.png``); one category, named after the folder."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ...errors import DatasetError
from ..images import IMAGE_SUFFIXES
from .common import Excluded, MaskFolder, Sample, inside, warn_once
from .registry import Layout, register


def categories(root: Path, ours: Excluded) -> list[str]:
    return [root.resolve().name]


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return category or root.resolve().name or "root", _folder_samples(root, ours)


def _folder_labels(root: Path) -> dict[str, int]:
    """``labels.csv``'s labels by image path below the root (none without the file)."""
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
    return labels


def _folder_samples(root: Path, ours: Excluded) -> list[Sample]:
    """Images anywhere below root (a ``masks/`` folder and our own outputs excluded); labels from
    ``labels.csv`` when present (columns image,label), masks from ``masks/`` (``_mask_of``)."""
    labels, labels_file = _folder_labels(root), root / "labels.csv"
    masks_dir = root / "masks"
    images = _folder_images(root, masks_dir, ours)
    masks = _mask_folders(masks_dir, ours)
    by_stem: dict[str, list[str]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image.relative_to(root).as_posix())
    samples = []
    for image in images:
        name = image.relative_to(root).as_posix()
        mask = _mask_of(image, name, masks, by_stem[image.stem])
        label = labels.get(name)
        if label is None and labels_file.is_file():
            warn_once(f"{labels_file}: no label for {name}", root)
        defect = image.parent.name if image.parent != root else ""
        samples.append(Sample(str(inside(root, image, "image")), name, defect, label,
                              str(inside(root, mask, "mask")) if mask else None))
    return samples


def _mask_of(image: Path, name: str, masks: dict[str, MaskFolder], namesakes: list[str]) -> Path | None:
    """An image's mask at its own path below ``masks/`` (``masks/cam2/x.png`` for ``cam2/x.png``). An
    image in a subfolder that ``masks/`` does not mirror takes ``masks/x.png`` only when no other
    image is called x: a mask found by a shared name alone could be another image's, and is refused."""
    folder = Path(name).parent.as_posix()
    folder = "" if folder == "." else folder
    if folder in masks or not folder:
        return masks[folder].of(image) if folder in masks else None
    flat = masks[""].of(image) if "" in masks else None
    others = [other for other in namesakes if other != name]
    if flat is not None and others:
        raise DatasetError(f"{flat}: the mask of {others[0]} or of {name}? Masks follow the image's path "
                           f"below the root (masks/{folder}/{flat.name} for {name})")
    return flat


def _mask_folders(masks_dir: Path, ours: Excluded) -> dict[str, MaskFolder]:
    """The mask files below ``masks/``, listed once, by their folder's path below ``masks/`` ("" for
    ``masks/`` itself)."""
    found: dict[str, MaskFolder] = {}
    if not masks_dir.is_dir():
        return found
    for folder, subfolders, files in os.walk(masks_dir):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if not ours(here / d)]
        rel = here.relative_to(masks_dir).as_posix()
        found["" if rel == "." else rel] = MaskFolder(here, [here / f for f in files
                                                            if Path(f).suffix.lower() in IMAGE_SUFFIXES])
    return found


def _folder_images(root: Path, masks_dir: Path, ours: Excluded) -> list[Path]:
    """Image files below root, in sorted order, never entering ``masks/`` or a folder of ours."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if here / d != masks_dir and not ours(here / d)]
        found.extend(here / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and (here / f).is_file())
    return sorted(found)



register(Layout("folder", "nonzero", categories, samples, root_is_category=True))
