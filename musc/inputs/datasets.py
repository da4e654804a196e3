"""Datasets: which images a category has, their labels and masks (docs/METHOD.md section 1).

Layouts: MVTec AD, VisA (split csv), BTAD, and a plain folder of images. Image order follows the
reference: defect types sorted by name, file names sorted within each type.
"""
from __future__ import annotations

import csv
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..method.checks import TooFewImages, check_image_count

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DATASETS = ("mvtec_ad", "visa", "btad", "folder")
NORMAL_FOLDERS = {"mvtec_ad": "good", "btad": "ok"}
# How a resized mask becomes binary (docs/METHOD.md 1.3): MVTec AD and BTAD truncate (only 255
# survives, eroding edges); VisA keeps every non-zero pixel (dilating edges).
MASK_RULES = {"mvtec_ad": "truncate", "btad": "truncate", "visa": "nonzero", "folder": "nonzero"}


class DatasetError(ValueError):
    """The dataset cannot be read as asked; the message names the folder or file."""


class UnreadableImage(OSError):
    """An image file that cannot be decoded."""


@dataclass(frozen=True)
class Sample:
    path: str            # absolute path of the image
    name: str            # path relative to the category folder (or dataset root)
    defect_type: str     # folder name of the anomaly type ("good" for normal MVTec images)
    label: int | None    # 1 anomalous, 0 normal, None unknown
    mask_path: str | None


@dataclass(frozen=True)
class Category:
    dataset: str
    name: str
    root: str
    samples: tuple[Sample, ...]

    @property
    def mask_rule(self) -> str:
        return MASK_RULES[self.dataset]

    def check_size(self, k_list: Sequence[int] = (), divide_num: int = 1, seed: int = 0) -> None:
        """DatasetError (naming the category) unless its images suffice for the method's settings."""
        sizes = [len(members) for members in subsets(self.samples, divide_num, seed)] if divide_num > 1 else []
        try:
            check_image_count(len(self.samples), k_list, sizes)
        except TooFewImages as error:
            raise DatasetError(f"{error} (category {self.name!r})") from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _inside(root: Path, path: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(f"{what}: {path} points outside the dataset root {root}")
    return resolved


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DatasetError(f"dataset: unknown layout {dataset!r} (known: {', '.join(DATASETS)})")


def list_categories(dataset: str, root: str | Path) -> list[str]:
    """The categories present under ``root`` for a layout."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if dataset == "folder":
        return [root.resolve().name]
    if dataset == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def load_category(dataset: str, root: str | Path, category: str | None = None) -> Category:
    """All test images of one category, in the reference order."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if dataset == "folder":
        samples = _folder_samples(root)
        category = category or root.resolve().name
    elif dataset == "visa":
        samples = _visa_samples(root, category)
    else:
        samples = _mvtec_style_samples(root, category, NORMAL_FOLDERS[dataset])
    if not samples:
        raise DatasetError(f"category {category!r}: no images found under {root}")
    names = [s.path for s in samples]
    if len(set(names)) != len(names):
        raise DatasetError(f"category {category!r}: the same image is listed twice")
    return Category(dataset, str(category), str(root), tuple(samples))


def _mvtec_style_samples(root: Path, category: str | None, normal: str) -> list[Sample]:
    if not category:
        raise DatasetError("category: this layout needs a category name")
    test = root / category / "test"
    if not test.is_dir():
        known = ", ".join(list_categories("mvtec_ad", root)) or "none"
        raise DatasetError(f"category {category!r}: no folder {test} (categories here: {known})")
    samples, missing_masks = [], []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        defect = type_dir.name
        masks_dir = root / category / "ground_truth" / defect
        images = _images_in(type_dir)
        stems = [p.stem for p in images]
        shared = sorted({stem for stem in stems if stems.count(stem) > 1})
        if shared:
            warnings.warn(f"category {category!r}: images in {defect}/ share a name ({', '.join(shared[:3])}) "
                          f"and so their mask", stacklevel=3)
        for image in images:
            label = 0 if defect == normal else 1
            mask = None
            if label:
                candidates = [masks_dir / f"{image.stem}_mask.png", masks_dir / f"{image.stem}.png",
                              masks_dir / f"{image.stem}_mask{image.suffix}"]
                mask = next((str(_inside(root, c, "mask")) for c in candidates if c.is_file()), None)
                if mask is None and masks_dir.is_dir():
                    missing_masks.append(f"{defect}/{image.name}")
            samples.append(Sample(str(_inside(root, image, "image")), f"{defect}/{image.name}", defect, label, mask))
    if missing_masks:
        warnings.warn(f"category {category!r}: {len(missing_masks)} anomalous image(s) have no mask "
                      f"(first: {missing_masks[0]}); pixel metrics leave them out", stacklevel=3)
    return samples


def _visa_rows(root: Path) -> list[dict[str, str]]:
    split = root / "split_csv" / "1cls.csv"
    if not split.is_file():
        raise DatasetError(f"root: VisA split file {split} not found")
    with split.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"object", "split", "label", "image", "mask"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetError(f"{split}: expected columns {', '.join(sorted(needed))}")
    return rows


def _visa_samples(root: Path, category: str | None) -> list[Sample]:
    rows = [r for r in _visa_rows(root) if r["object"] == category and r["split"] == "test"]
    samples = []
    for row in rows:
        image = _inside(root, root / row["image"], "image")
        label = 0 if "Normal" in row["image"] else 1
        mask = str(_inside(root, root / row["mask"], "mask")) if label and row["mask"] else None
        defect = "good" if label == 0 else "bad"
        samples.append(Sample(str(image), row["image"], defect, label, mask))
    return samples


def _folder_samples(root: Path) -> list[Sample]:
    """Images anywhere below root (a ``masks/`` folder excluded); labels from ``labels.csv`` when
    present (columns image,label), masks from ``masks/<stem>.png`` or ``masks/<stem>_mask.png``."""
    labels: dict[str, int] = {}
    labels_file = root / "labels.csv"
    if labels_file.is_file():
        with labels_file.open(newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    labels[row["image"]] = int(row["label"])
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(f"{labels_file}: line {line} needs columns image,label with label 0 or 1") from None
    masks_dir = root / "masks"
    samples = []
    for image in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and masks_dir not in p.parents):
        name = image.relative_to(root).as_posix()
        mask = next((str(c) for c in (masks_dir / f"{image.stem}.png", masks_dir / f"{image.stem}_mask.png")
                     if c.is_file()), None)
        label = labels.get(name)
        if label is None and labels_file.is_file():
            warnings.warn(f"{labels_file}: no label for {name}", stacklevel=3)
        defect = image.parent.name if image.parent != root else ""
        samples.append(Sample(str(_inside(root, image, "image")), name, defect, label, mask))
    return samples


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images scaled to 8 bits (PIL's convert would clip them)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def load_image(path: str | Path) -> Image.Image:
    """An image as 8-bit RGB. UnreadableImage (one line, naming the file) when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_8bit(image).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableImage(f"{path}: unreadable image ({reason})") from None


def load_mask(path: str | Path | None, image_size: int, rule: str) -> np.ndarray:
    """A ground-truth mask as (S, S) uint8 {0, 1}, binarised per dataset (docs/METHOD.md 1.3)."""
    if path is None:
        return np.zeros((image_size, image_size), dtype=np.uint8)
    try:
        with Image.open(path) as mask:
            mask.load()
            mask = _to_8bit(mask)
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{path}: unreadable mask ({error})") from None
    if mask.mode == "1":  # PIL resizes mode-1 masks with nearest neighbour, as the reference would
        resized = np.asarray(mask.resize((image_size, image_size), Image.NEAREST), dtype=np.uint8)
        return (resized > 0).astype(np.uint8)
    mask = mask.convert("L")
    peak = int(np.asarray(mask).max())
    if 0 < peak < 255:
        warnings.warn(f"{path}: mask values reach only {peak}, not 255; treating every non-zero pixel "
                      f"as defective", stacklevel=2)
        mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    resized = np.asarray(mask.resize((image_size, image_size), Image.BILINEAR))
    binary = resized == 255 if rule == "truncate" else resized > 0
    return binary.astype(np.uint8)


def subsets(samples, divide_num: int, seed: int) -> list[list[int]]:
    """Indices of each subset (docs/METHOD.md 1.4): stratified by defect type, same shuffle each time."""
    if divide_num == 1:
        return [list(range(len(samples)))]
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(Path(sample.path).parent.name, []).append(index)
    result = []
    for part in range(divide_num):
        random.seed(seed)
        chosen = []
        for members in groups.values():
            shuffled = list(members)
            random.shuffle(shuffled)
            chosen.extend(shuffled[part::divide_num])
        result.append(chosen)
    return result
