"""The registry of dataset layouts: each layout declares, once, its name, how its masks are binarised,
the paper's RsCIN windows for it, how its categories are found and how a category's images are
listed. One module per family of layouts registers them (musc/inputs/layouts/)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import DatasetError
from .common import Excluded, Sample

# (root, the folders never read) -> the categories; (root, category, the folders never read) -> the
# category's name as the layout spells it, and its images
Categories = Callable[[Path, Excluded], "list[str]"]
Samples = Callable[[Path, "str | None", Excluded], "tuple[str, list[Sample]]"]


@dataclass(frozen=True)
class Layout:
    name: str
    mask_rule: str              # truncate (only 255 survives resizing) or nonzero (docs/METHOD.md 1.3)
    categories: Categories
    samples: Samples
    k_list: tuple[int, ...] = (1, 2, 3)  # the paper's RsCIN windows; the later layouts take MVTec AD's
    root_is_category: bool = False       # the dataset's folder is itself the one category


LAYOUTS: dict[str, Layout] = {}


def register(*layouts: Layout) -> None:
    for entry in layouts:
        LAYOUTS[entry.name] = entry


def layout(name: str) -> Layout:
    """The layout of that name; DatasetError naming ``dataset`` and the known ones otherwise."""
    if name not in LAYOUTS:
        raise DatasetError(f"dataset: unknown layout {name!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS[name]
