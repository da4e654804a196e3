"""KolektorSDD: ``<root>/kosNN/PartN.jpg``, each with its label ``PartN_label.bmp``; one category,
named after the root folder."""
from __future__ import annotations

import re
from pathlib import Path


from ...errors import DatasetError
from ..images import images_in, mask_levels
from .common import Excluded, Sample, inside
from .registry import Layout, register

KOLEKTOR_PART = re.compile(r"Part\d+")


def categories(root: Path, ours: Excluded) -> list[str]:
    return [root.resolve().name]


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return _kolektor_category(root, category), _kolektor_samples(root, ours)


def _kolektor_category(root: Path, category: str | None) -> str:
    """KolektorSDD is one category, named after its root folder: every ``kosNN`` folder holds
    images of the same kind of part (one electrical commutator, seen in up to eight positions),
    and the parts score each other best as one set (a single kosNN folder holds too few images)."""
    name = root.resolve().name
    if category not in (None, name):
        raise DatasetError(f"category {category!r}: KolektorSDD is one category, named after its root "
                           f"folder ({name!r})")
    return name


def _kolektor_samples(root: Path, ours: Excluded) -> list[Sample]:
    """``<root>/kosNN/PartN.jpg`` with ``PartN_label.bmp``: a label with any non-zero pixel makes the
    part defective, and is its mask."""
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not ours(p)):
        files = images_in(folder)
        parts = [p for p in files if KOLEKTOR_PART.fullmatch(p.stem)]
        labels = [p for p in files if p.stem.endswith("_label")]
        for image in parts:
            found = [p for p in labels if p.stem == f"{image.stem}_label"]
            if not found:
                raise DatasetError(f"{image}: no label {image.stem}_label.bmp beside it")
            if len(found) > 1:
                raise DatasetError(f"{image}: two labels, {found[0].name} and {found[1].name} "
                                   f"(KolektorSDD has one label per part)")
            defective = bool(mask_levels(found[0]).any())
            samples.append(Sample(str(inside(root, image, "image")), f"{folder.name}/{image.name}",
                                  "defective" if defective else "good", int(defective),
                                  str(inside(root, found[0], "mask")) if defective else None))
        stray = [p for p in labels if p.stem[:-len("_label")] not in {image.stem for image in parts}]
        if stray:
            raise DatasetError(f"{stray[0]}: a label for no image (no part of that name beside it)")
    return samples



register(Layout("kolektor", "nonzero", categories, samples, root_is_category=True))
