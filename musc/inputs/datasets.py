"""Datasets: which images a category has, their labels and masks (docs/METHOD.md section 1).

Layouts: MVTec AD, VisA (split csv), BTAD, and a plain folder of images. Image order follows the
reference: defect types sorted by name, file names sorted within each type.
"""
from __future__ import annotations

import csv
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..method.checks import MIN_IMAGES, TooFewImages, check_image_count
from ..store.files import ARTIFACTS_MARKER

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DATASETS = ("mvtec_ad", "visa", "btad", "folder")
NORMAL_FOLDERS = {"mvtec_ad": "good", "btad": "ok"}
# How a resized mask becomes binary (docs/METHOD.md 1.3): MVTec AD and BTAD truncate (only 255
# survives, eroding edges); VisA keeps every non-zero pixel (dilating edges).
MASK_RULES = {"mvtec_ad": "truncate", "btad": "truncate", "visa": "nonzero", "folder": "nonzero"}
# Images (and masks) above this many pixels are refused from their header, before decoding
# (Pillow's own guard only starts at about 179 megapixels). MUSC_MAX_IMAGE_PIXELS overrides it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


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
        if divide_num > 1 and divide_num * MIN_IMAGES > len(self.samples):  # before listing the subsets
            raise DatasetError(f"divide_num: splitting {len(self.samples)} images into {divide_num} subsets leaves "
                               f"fewer than {MIN_IMAGES} in one (category {self.name!r})")
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


def check_category_name(category: str) -> None:
    """A category becomes a folder name under the artifacts root: one plain name, nothing that
    leads elsewhere (``..``, separators, an absolute path)."""
    text = str(category)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or Path(text).is_absolute() or text != text.strip()):
        raise DatasetError(f"category: {text!r} is not a plain folder name (no '/', '..' or absolute paths)")


class _Excluded:
    """What a listing never reads as input: folders holding the artifacts marker, and the folders
    given (the artifacts root of the run), wherever they lie below the dataset root."""

    def __init__(self, exclude: Sequence[str | Path] = ()):
        self.folders = {Path(folder).resolve() for folder in exclude if folder}

    def __call__(self, folder: Path) -> bool:
        return (folder / ARTIFACTS_MARKER).exists() or folder.resolve() in self.folders

    def below(self, path: Path, root: Path) -> bool:
        """Whether ``path`` lies in an excluded folder below the dataset root (a dataset kept inside
        an artifacts folder is still a dataset)."""
        resolved, top = path.resolve(), root.resolve()
        inside = [parent for parent in resolved.parents if parent.is_relative_to(top) and parent != top]
        return (any(resolved.is_relative_to(folder) and folder != top and folder.is_relative_to(top)
                    for folder in self.folders)
                or any((parent / ARTIFACTS_MARKER).exists() for parent in inside))


_warned: set[str] = set()


def _warn_once(message: str, where: Path) -> None:
    """A dataset warning once per process and dataset folder, however often the category is listed
    (the command line checks it before the flow, and the flow again)."""
    key = f"{Path(where).resolve()}\n{message}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def list_categories(dataset: str, root: str | Path, exclude: Sequence[str | Path] = ()) -> list[str]:
    """The categories present under ``root`` for a layout (never a folder in ``exclude`` or one
    holding the artifacts marker)."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if dataset == "folder":
        return [root.resolve().name]
    if dataset == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    ours = _Excluded(exclude)
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir() and not ours(p))


def load_category(dataset: str, root: str | Path, category: str | None = None,
                  exclude: Sequence[str | Path] = ()) -> Category:
    """All test images of one category, in the reference order. Nothing in ``exclude`` (the run's
    artifacts root) or in a folder holding the artifacts marker is ever listed: our outputs are
    never read back as inputs, wherever the artifacts folder lies."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if category is not None:
        check_category_name(category)
    ours = _Excluded(exclude)
    for folder in ours.folders:  # a folder of images inside our own outputs would take them in
        if root.resolve() == folder or (dataset == "folder" and root.resolve().is_relative_to(folder)):
            raise DatasetError(f"root: the dataset folder {root} lies in the artifacts folder {folder}; "
                               f"give another artifacts folder")
    if dataset == "folder":
        samples = _folder_samples(root, ours)
        category = category or root.resolve().name or "root"
    elif dataset == "visa":
        samples = _visa_samples(root, category)
    else:
        samples = _mvtec_style_samples(root, category, NORMAL_FOLDERS[dataset])
    samples = [s for s in samples if not ours.below(Path(s.path), root)]
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
            _warn_once(f"category {category!r}: images in {defect}/ share a name ({', '.join(shared[:3])}) "
                       f"and so their mask", type_dir)
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
        _warn_once(f"category {category!r}: {len(missing_masks)} anomalous image(s) have no mask "
                   f"(first: {missing_masks[0]}); pixel metrics leave them out", test)
    return samples


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
        image = _inside(root, root / row["image"], "image")
        label = 0 if "Normal" in row["image"] else 1
        mask = str(_inside(root, root / row["mask"], "mask")) if label and row["mask"] else None
        defect = "good" if label == 0 else "bad"
        samples.append(Sample(str(image), row["image"], defect, label, mask))
    return samples


def _folder_samples(root: Path, ours: _Excluded) -> list[Sample]:
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
        mask = next((str(_inside(root, c, "mask")) for c in (masks_dir / f"{image.stem}.png",
                                                              masks_dir / f"{image.stem}_mask.png")
                     if c.is_file()), None)
        label = labels.get(name)
        if label is None and labels_file.is_file():
            _warn_once(f"{labels_file}: no label for {name}", root)
        defect = image.parent.name if image.parent != root else ""
        samples.append(Sample(str(_inside(root, image, "image")), name, defect, label, mask))
    return samples


def _folder_images(root: Path, masks_dir: Path, ours: _Excluded) -> list[Path]:
    """Image files below root, in sorted order, never entering ``masks/`` or a folder of ours."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if here / d != masks_dir and not ours(here / d)]
        found.extend(here / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and (here / f).is_file())
    return sorted(found)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images scaled to 8 bits (PIL's convert would clip them)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def max_image_pixels() -> int:
    """The pixel limit for images and masks (MUSC_MAX_IMAGE_PIXELS, default 100 megapixels)."""
    value = os.environ.get("MUSC_MAX_IMAGE_PIXELS", "")
    try:
        return int(value) if value.strip() else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise DatasetError(f"MUSC_MAX_IMAGE_PIXELS: expected a number of pixels, got {value!r}") from None


def _open_checked(path: str | Path, what: str) -> Image.Image:
    """Decode an image or mask after checking its size from the header: UnreadableImage (naming the
    file) when it cannot be read or is above the pixel limit."""
    limit = max_image_pixels()
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limit:
                raise UnreadableImage(f"{path}: {what} of {width} x {height} pixels is above the limit of "
                                      f"{limit / 1e6:g} megapixels (MUSC_MAX_IMAGE_PIXELS)")
            image.load()
            converted = _to_8bit(image)
            return converted.copy() if converted is image else converted  # usable once the file is closed
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:  # Pillow refuses from the header already (above ~179 megapixels)
        raise UnreadableImage(f"{path}: {what} of more than {limit / 1e6:g} megapixels is above the limit "
                              f"(MUSC_MAX_IMAGE_PIXELS)") from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableImage(f"{path}: unreadable {what} ({reason})") from None


def load_image(path: str | Path) -> Image.Image:
    """An image as 8-bit RGB. UnreadableImage (one line, naming the file) when it cannot be decoded
    or is too large."""
    return _open_checked(path, "image").convert("RGB")


def load_mask(path: str | Path | None, image_size: int, rule: str) -> np.ndarray:
    """A ground-truth mask as (S, S) uint8 {0, 1}, binarised per dataset (docs/METHOD.md 1.3)."""
    if path is None:
        return np.zeros((image_size, image_size), dtype=np.uint8)
    mask = _open_checked(path, "mask")
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
        generator = random.Random(seed)  # the reference's random.seed + random.shuffle, without shared state
        chosen = []
        for members in groups.values():
            shuffled = list(members)
            generator.shuffle(shuffled)
            chosen.extend(shuffled[part::divide_num])
        result.append(chosen)
    return result
