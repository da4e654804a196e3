"""Datasets: which images a category has, their labels and masks (docs/METHOD.md section 1).

Each layout (MVTec AD, VisA, BTAD, a plain folder of images, and those anomalib reads besides: MVTec
AD 2, MVTec LOCO, MPDD, Real-IAD, KolektorSDD, AutoVI) is declared once in its family's module of
``musc/inputs/layouts/`` (its categories, its images, its mask rule, its RsCIN windows); this
module lists a layout's categories and loads one, the same way for all, never reading our own
outputs back as inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import DatasetError
from .layouts import mvtec, visa, real_iad, kolektor, folder  # noqa: F401,I001 - each registers its layouts, in this order
from .layouts.common import Category, Excluded, Sample, check_category_name, subset_groups
from .layouts.registry import LAYOUTS, Layout, layout

DATASETS = tuple(LAYOUTS)


def list_categories(dataset: str, root: str | Path, exclude: Sequence[str | Path] = ()) -> list[str]:
    """The categories present under ``root`` for a layout (never a folder in ``exclude`` or one
    holding the artifacts marker). MVTec AD 2's private test sets are categories too, but not
    listed: without labels they are scored only when named (``<category>_private``), so that a run
    over every category evaluates, and averages, the public test sets."""
    chosen = layout(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    return chosen.categories(root, Excluded(exclude))


def load_category(dataset: str, root: str | Path, category: str | None = None,
                  exclude: Sequence[str | Path] = ()) -> Category:
    """All test images of one category, in the reference order. Nothing in ``exclude`` (the run's
    artifacts root) or in a folder holding the artifacts marker is ever listed: our outputs are
    never read back as inputs, wherever the artifacts folder lies."""
    chosen = layout(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if category is not None:
        check_category_name(category)
    ours = Excluded(exclude)
    for artifacts in ours.folders:  # a folder of images inside our own outputs would take them in
        if root.resolve() == artifacts or (chosen.root_is_category and root.resolve().is_relative_to(artifacts)):
            raise DatasetError(f"root: the dataset folder {root} lies in the artifacts folder {artifacts}; "
                               f"give another artifacts folder")
    if category is None and not chosen.root_is_category:
        raise DatasetError("category: this layout needs a category name")
    category, samples = chosen.samples(root, category, ours)
    samples = [s for s in samples if not ours.below(Path(s.path), root)]
    if not samples:
        raise DatasetError(f"category {category!r}: no images found under {root}")
    names = [s.path for s in samples]
    if len(set(names)) != len(names):
        raise DatasetError(f"category {category!r}: the same image is listed twice")
    return Category(dataset, str(category), str(root), tuple(samples), chosen.mask_rule, str(root.resolve()))


__all__ = ["Category", "DATASETS", "DatasetError", "Sample", "list_categories", "load_category", "subset_groups"]
