"""Datasets: which images a category has, their labels and masks (docs/METHOD.md section 1).

Layouts: MVTec AD, VisA (split csv), BTAD, a plain folder of images, and those anomalib reads
besides: MVTec AD 2, MVTec LOCO, MPDD, Real-IAD (one category per camera view), KolektorSDD and
AutoVI. Image order follows the reference: defect types sorted by name, file names sorted within
each type.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..method.checks import MIN_IMAGES, TooFewImages, check_image_count
from ..store.files import ARTIFACTS_MARKER

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DATASETS = ("mvtec_ad", "visa", "btad", "folder", "mvtec_ad2", "mvtec_loco", "mpdd", "real_iad", "kolektor",
            "autovi")
# How a resized mask becomes binary (docs/METHOD.md 1.3): MVTec AD and BTAD truncate (only 255
# survives, eroding edges), as the reference's loader does, and so MPDD, read in MVTec AD's layout
# by MVTec AD's loader; the others keep every non-zero pixel (dilating edges), as VisA does and as
# the other datasets' own evaluations count a ground-truth pixel: any value but 0 is defective.
MASK_RULES = {"mvtec_ad": "truncate", "btad": "truncate", "visa": "nonzero", "folder": "nonzero",
              "mvtec_ad2": "nonzero", "mvtec_loco": "nonzero", "mpdd": "truncate", "real_iad": "nonzero",
              "kolektor": "nonzero", "autovi": "nonzero"}


@dataclass(frozen=True)
class FolderLayout:
    """A layout in MVTec AD's manner: ``<category>/<test>/<type>/<image>``, one folder per defect
    type and one of normal images, masks under ``<category>/<ground_truth>/<type>/``."""
    normal: str = "good"               # the folder of normal images
    test: str = "test"                 # the test folder, inside the category folder
    ground_truth: str = "ground_truth"  # the masks' folder, inside the category folder
    mask_folders: bool = False         # a folder of masks per image (<image stem>/000.png, ...), combined
    strict: bool = False               # a missing ground-truth folder, a mask for no image, two masks for one image: errors


# MVTec AD and BTAD keep the reference's leniency (no masks folder: no pixel metrics); the layouts
# added later refuse what would silently lose or mix up masks.
FOLDER_LAYOUTS = {
    "mvtec_ad": FolderLayout(),
    "btad": FolderLayout(normal="ok"),
    "mpdd": FolderLayout(strict=True),
    "mvtec_ad2": FolderLayout(test="test_public", ground_truth="test_public/ground_truth", strict=True),
    "mvtec_loco": FolderLayout(mask_folders=True, strict=True),
    "autovi": FolderLayout(mask_folders=True, strict=True),
}
# MVTec AD 2's test sets without labels or masks, scored as categories <category>_private and
# <category>_private_mixed when named (the public test set is the category's own name).
AD2_PRIVATE_SETS = {"_private_mixed": "test_private_mixed", "_private": "test_private"}
# Real-IAD: the camera view in a file name (audiojack_0001_OK_C1_20230922093040.jpg); each view
# is a category <category>_C1 ... <category>_C5.
REAL_IAD_VIEW = re.compile(r"_(C\d+)(?=_|$)")
# KolektorSDD: <root>/kosNN/PartN.jpg, each with its label PartN_label.bmp
KOLEKTOR_PART = re.compile(r"Part\d+")

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
    defect_type: str     # the anomaly type as the layout names it: its folder ("good" for normal MVTec
                         # images), Real-IAD's class ("OK" for normal), KolektorSDD's "defective" or "good"
    label: int | None    # 1 anomalous, 0 normal, None unknown
    # the mask file; for layouts with several masks per image (MVTec LOCO, AutoVI) the tuple of
    # them, combined: a pixel non-zero in any of them is defective
    mask_path: str | tuple[str, ...] | None


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
        sizes = [len(members) for members in subsets(subset_groups(self.samples), divide_num, seed)] if divide_num > 1 else []
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
    holding the artifacts marker). MVTec AD 2's private test sets are categories too, but not
    listed: without labels they are scored only when named (``<category>_private``), so that a run
    over every category evaluates, and averages, the public test sets."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"root: dataset folder {root} does not exist")
    if dataset in ("folder", "kolektor"):
        return [root.resolve().name]
    if dataset == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    ours = _Excluded(exclude)
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not ours(p)]
    if dataset == "real_iad":
        return sorted(f"{p.name}_{view}" for p in folders if (p / "OK").is_dir() or (p / "NG").is_dir()
                      for view in _real_iad_views(p, ours))
    test = FOLDER_LAYOUTS[dataset].test
    return sorted(p.name for p in folders if (p / test).is_dir())


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
    elif dataset == "kolektor":
        category = _kolektor_category(root, category)
        samples = _kolektor_samples(root, ours)
    elif dataset == "real_iad":
        samples = _real_iad_samples(root, category, ours)
    elif dataset == "mvtec_ad2" and (private := _ad2_private_set(root, category)):
        samples = _ad2_private_samples(root, str(category), private)
    else:
        samples = _mvtec_style_samples(root, category, dataset)
    samples = [s for s in samples if not ours.below(Path(s.path), root)]
    if not samples:
        raise DatasetError(f"category {category!r}: no images found under {root}")
    names = [s.path for s in samples]
    if len(set(names)) != len(names):
        raise DatasetError(f"category {category!r}: the same image is listed twice")
    return Category(dataset, str(category), str(root), tuple(samples))


def _no_category_folder(dataset: str, root: Path, category: str, folder: Path) -> DatasetError:
    known = ", ".join(list_categories(dataset, root)) or "none"
    return DatasetError(f"category {category!r}: no folder {folder} (categories here: {known})")


def _mvtec_style_samples(root: Path, category: str | None, dataset: str) -> list[Sample]:
    if not category:
        raise DatasetError("category: this layout needs a category name")
    layout = FOLDER_LAYOUTS[dataset]
    test = root / category / layout.test
    if not test.is_dir():
        raise _no_category_folder(dataset, root, category, test)
    ground_truth = root / category / layout.ground_truth
    samples, missing_masks = [], []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir() and p != ground_truth):
        defect = type_dir.name
        masks_dir = ground_truth / defect
        images = _images_in(type_dir)
        stems = [p.stem for p in images]
        shared = sorted({stem for stem in stems if stems.count(stem) > 1})
        if shared:
            _warn_once(f"category {category!r}: images in {defect}/ share a name ({', '.join(shared[:3])}) "
                       f"and so their mask", type_dir)
        anomalous = defect != layout.normal
        if layout.strict and anomalous and images and not masks_dir.is_dir():
            raise DatasetError(f"{masks_dir}: no ground-truth folder for the {len(images)} image(s) in {type_dir}")
        claimed: set[Path] = set()
        for image in images:
            mask = _masks_of(root, image, masks_dir, layout) if anomalous else None
            if mask is None and anomalous and masks_dir.is_dir():
                missing_masks.append(f"{defect}/{image.name}")
            claimed.update(Path(m) for m in ([mask] if isinstance(mask, str) else mask or ()))
            samples.append(Sample(str(_inside(root, image, "image")), f"{defect}/{image.name}", defect,
                                  int(anomalous), mask))
        if layout.strict and masks_dir.is_dir():
            _refuse_unclaimed_masks(masks_dir, claimed, layout.mask_folders, type_dir)
    if missing_masks:
        _warn_once(f"category {category!r}: {len(missing_masks)} anomalous image(s) have no mask "
                   f"(first: {missing_masks[0]}); pixel metrics leave them out", test)
    return samples


def _masks_of(root: Path, image: Path, masks_dir: Path, layout: FolderLayout) -> str | tuple[str, ...] | None:
    """An anomalous image's mask (its file), or for layouts with a folder of masks per image the
    masks in ``<masks_dir>/<image stem>/``; None if it has none."""
    if layout.mask_folders:
        folder = masks_dir / image.stem
        if not folder.is_dir():
            return None
        masks = _images_in(folder)
        if not masks:
            raise DatasetError(f"{folder}: a mask folder holding no mask (for the image {image})")
        return tuple(str(_inside(root, m, "mask")) for m in masks)
    names = dict.fromkeys([f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"])
    found = [masks_dir / name for name in names if (masks_dir / name).is_file()]
    if len(found) > 1 and layout.strict:
        raise DatasetError(f"{image}: two masks, {found[0].name} and {found[1].name} in {masks_dir} "
                           f"(this layout has one mask per image)")
    return str(_inside(root, found[0], "mask")) if found else None


def _refuse_unclaimed_masks(masks_dir: Path, claimed: set[Path], folders: bool, images: Path) -> None:
    """DatasetError naming the first mask (or, where masks come in a folder per image, mask folder)
    in ``masks_dir`` that no image claims."""
    claimed = {path.resolve() for path in claimed} | ({path.resolve().parent for path in claimed} if folders else set())
    for entry in sorted(masks_dir.iterdir()):
        mask_like = (entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES) or (folders and entry.is_dir())
        if mask_like and not entry.name.startswith(".") and entry.resolve() not in claimed:
            raise DatasetError(f"{entry}: a mask for no image (no image of that name in {images})")


def _ad2_private_set(root: Path, category: str | None) -> Path | None:
    """The MVTec AD 2 private test folder a category ``<name>_private[_mixed]`` names, if it is one
    (a category folder of that very name wins)."""
    if not category or (root / category).is_dir():
        return None
    for suffix, folder in AD2_PRIVATE_SETS.items():
        if category.endswith(suffix) and len(category) > len(suffix):
            return root / category[:-len(suffix)] / folder
    return None


def _ad2_private_samples(root: Path, category: str, folder: Path) -> list[Sample]:
    """MVTec AD 2's private test images: scored, without labels or masks (the benchmark server
    holds them)."""
    if not folder.is_dir():
        known = ", ".join(f"{name}{suffix}" for name in list_categories("mvtec_ad2", root)
                          for suffix, private in AD2_PRIVATE_SETS.items() if (root / name / private).is_dir())
        raise DatasetError(f"category {category!r}: no folder {folder} (private test sets here: {known or 'none'})")
    return [Sample(str(_inside(root, image, "image")), image.name, "", None, None) for image in _images_in(folder)]


def _real_iad_views(folder: Path, ours: _Excluded) -> list[str]:
    """The camera views (C1, C2, ...) in the file names below a Real-IAD category folder."""
    views = set()
    for here, subfolders, files in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not ours(Path(here) / d)]
        views.update(m.group(1) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES
                     for m in [REAL_IAD_VIEW.search(Path(f).stem)] if m)
    return sorted(views, key=lambda v: int(v[1:]))


def _real_iad_split(root: Path, name: str) -> Path | None:
    """A Real-IAD split file: ``realiad_jsons/<category>.json`` in the dataset root or beside it
    (the download keeps ``realiad_jsons/`` beside ``realiad_<resolution>/``), also one level
    deeper, as the download nests it (``realiad_jsons/realiad_jsons/``)."""
    for base in (root, root.resolve().parent):
        for folder in (base / "realiad_jsons", base / "realiad_jsons" / "realiad_jsons"):
            if (folder / f"{name}.json").is_file():
                return folder / f"{name}.json"
    return None


def _real_iad_samples(root: Path, category: str | None, ours: _Excluded) -> list[Sample]:
    """One camera view of a Real-IAD category: the test split of ``realiad_jsons/<name>.json``, or
    without it every image of ``OK/`` and ``NG/`` (zero-shot scoring needs no training split)."""
    match = re.fullmatch(r"(.+)_(C\d+)", category or "")
    if not match:
        known = ", ".join(list_categories("real_iad", root)[:5]) or "none"
        raise DatasetError(f"category {category!r}: Real-IAD categories are one camera view each, "
                           f"<category>_C1 ... <category>_C5 (here: {known} ...)")
    name, view = match.groups()
    folder = root / name
    if not folder.is_dir():
        raise _no_category_folder("real_iad", root, category, folder)
    split = _real_iad_split(root, name)
    if split is None:
        _warn_once(f"category {name!r}: no split file realiad_jsons/{name}.json in or beside {root}; "
                   f"scoring every image in {folder}/OK and {folder}/NG", folder)
        entries = _real_iad_listed(folder, ours)
    else:
        entries = _real_iad_test_split(split, folder)
    samples = []
    for image, defect, mask in entries:
        tag = REAL_IAD_VIEW.search(image.stem)
        if tag is None:
            raise DatasetError(f"{image}: no camera view (_C1_ ... _C5_) in the file name")
        if tag.group(1) == view:
            label = 0 if defect == "OK" else 1
            samples.append(Sample(str(_inside(root, image, "image")), image.relative_to(folder).as_posix(), defect,
                                  label, str(_inside(root, mask, "mask")) if mask else None))
    missing = [s.name for s in samples if s.label == 1 and s.mask_path is None]
    if missing:
        _warn_once(f"category {category!r}: {len(missing)} anomalous image(s) have no mask (first: {missing[0]}); "
                   f"pixel metrics leave them out", folder)
    return samples


def _real_iad_test_split(split: Path, folder: Path) -> list[tuple[Path, str, Path | None]]:
    """(image, defect type or "OK", mask) for each test entry of a Real-IAD split file; its paths
    are relative to the category folder."""
    try:
        entries = json.loads(split.read_text(encoding="utf-8")).get("test")
        if not isinstance(entries, list):
            raise ValueError("no list 'test'")
        rows = [(str(e["image_path"]), str(e["anomaly_class"]), e.get("mask_path") or None) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{split}: not a Real-IAD split file (expected a list 'test' of entries with "
                           f"image_path, anomaly_class and mask_path: {error})") from None
    out = []
    for image, defect, mask in rows:
        for path in (image, mask):
            if path and not (folder / path).is_file():
                raise DatasetError(f"{split}: lists {folder / path}, which does not exist")
        out.append((folder / image, defect, folder / mask if mask else None))
    return sorted(out, key=lambda row: row[0].relative_to(folder).as_posix())


def _real_iad_listed(folder: Path, ours: _Excluded) -> list[tuple[Path, str, Path | None]]:
    """(image, defect type or "OK", mask) for the images below ``OK/`` and ``NG/<defect>/``: a mask is
    ``<image stem>_mask.png`` or ``<image stem>.png`` beside a .jpg image."""
    out = []
    for top, defect_of in ((folder / "OK", lambda rel: "OK"), (folder / "NG", lambda rel: rel.parts[0])):
        if not top.is_dir():
            continue
        for here, subfolders, files in os.walk(top):
            subfolders[:] = sorted(d for d in subfolders if not ours(Path(here) / d))
            here = Path(here)
            if here == top and top.name == "NG":
                continue  # NG/ holds defect folders
            names = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and (here / f).is_file())
            images = [f for f in names if not Path(f).stem.endswith("_mask")
                      and not (Path(f).suffix.lower() == ".png"
                               and any(Path(g).stem == Path(f).stem and g != f for g in names))]
            claimed = set()
            for image in images:
                stem = Path(image).stem
                masks = [m for m in (f"{stem}_mask.png", f"{stem}.png") if m in names and m != image]
                if len(masks) > 1:
                    raise DatasetError(f"{here / image}: two masks, {masks[0]} and {masks[1]} "
                                       f"(Real-IAD has one mask per image)")
                claimed.update(masks)
                defect = defect_of(here.relative_to(top))
                out.append((here / image, defect, here / masks[0] if masks and defect != "OK" else None))
            stray = [m for m in names if m not in claimed and m not in images]
            if stray:
                raise DatasetError(f"{here / stray[0]}: a mask for no image (no image of that name beside it)")
    return sorted(out, key=lambda row: row[0].relative_to(folder).as_posix())


def _kolektor_category(root: Path, category: str | None) -> str:
    """KolektorSDD is one category, named after its root folder: every ``kosNN`` folder holds
    images of the same kind of part (one electrical commutator, seen in up to eight positions),
    and the parts score each other best as one set (a single kosNN folder holds too few images)."""
    name = root.resolve().name
    if category not in (None, name):
        raise DatasetError(f"category {category!r}: KolektorSDD is one category, named after its root "
                           f"folder ({name!r})")
    return name


def _kolektor_samples(root: Path, ours: _Excluded) -> list[Sample]:
    """``<root>/kosNN/PartN.jpg`` with ``PartN_label.bmp``: a label with any non-zero pixel makes the
    part defective, and is its mask."""
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not ours(p)):
        files = _images_in(folder)
        parts = [p for p in files if KOLEKTOR_PART.fullmatch(p.stem)]
        labels = [p for p in files if p.stem.endswith("_label")]
        for image in parts:
            found = [p for p in labels if p.stem == f"{image.stem}_label"]
            if not found:
                raise DatasetError(f"{image}: no label {image.stem}_label.bmp beside it")
            if len(found) > 1:
                raise DatasetError(f"{image}: two labels, {found[0].name} and {found[1].name} "
                                   f"(KolektorSDD has one label per part)")
            defective = bool(np.asarray(_open_checked(found[0], "mask").convert("L")).any())
            samples.append(Sample(str(_inside(root, image, "image")), f"{folder.name}/{image.name}",
                                  "defective" if defective else "good", int(defective),
                                  str(_inside(root, found[0], "mask")) if defective else None))
        stray = [p for p in labels if p.stem[:-len("_label")] not in {image.stem for image in parts}]
        if stray:
            raise DatasetError(f"{stray[0]}: a label for no image (no part of that name beside it)")
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


def _open_checked(path: str | Path, what: str, data: bytes | None = None) -> Image.Image:
    """Decode an image or mask after checking its size from the header: UnreadableImage (naming the
    file) when it cannot be read or is above the pixel limit. ``data``: the file's bytes, already
    read (then ``path`` only names it)."""
    limit = max_image_pixels()
    source = io.BytesIO(data) if data is not None else path
    try:
        with Image.open(source) as image:
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
        reason = reason.replace(repr(source), repr(str(path)))  # the file's name, not the buffer it was read into
        raise UnreadableImage(f"{path}: unreadable {what} ({reason})") from None


def _combined_mask(paths: Sequence[str | Path]) -> Image.Image:
    """Several masks of one image as one (MVTec LOCO, AutoVI: a file per defect region): a pixel
    non-zero in any of them is defective (255), else 0."""
    union, first = None, None
    for path in paths:
        part = np.asarray(_open_checked(path, "mask").convert("L")) > 0
        if union is None:
            union, first = part, path
        elif part.shape != union.shape:
            raise DatasetError(f"{path}: mask of {part.shape[1]} x {part.shape[0]} pixels, but {first} of the "
                               f"same image has {union.shape[1]} x {union.shape[0]}")
        else:
            union |= part
    if union is None:
        raise DatasetError("mask: an empty list of mask files")
    return Image.fromarray(union.astype(np.uint8) * 255, mode="L")


def load_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """An image as 8-bit RGB. UnreadableImage (one line, naming the file) when it cannot be decoded
    or is too large. ``data``: the file's bytes, already read (decoded from them; ``path`` names them)."""
    return _open_checked(path, "image", data).convert("RGB")


def load_mask(path: str | Path | Sequence[str | Path] | None, image_size: int | tuple[int, int], rule: str
              ) -> np.ndarray:
    """A ground-truth mask as (S, S) uint8 {0, 1}, binarised per dataset (docs/METHOD.md 1.3).
    ``path``: a mask file, or several masks of one image (combined: non-zero in any is defective).
    ``image_size``: S, or (height, width) (tiled runs: the image's full resolution)."""
    height, width = (image_size, image_size) if np.ndim(image_size) == 0 else (int(n) for n in image_size)
    if path is None:
        return np.zeros((height, width), dtype=np.uint8)
    mask = _open_checked(path, "mask") if isinstance(path, (str, Path)) else _combined_mask(path)
    if mask.mode == "1":  # PIL resizes mode-1 masks with nearest neighbour, as the reference would
        resized = np.asarray(mask.resize((width, height), Image.NEAREST), dtype=np.uint8)
        return (resized > 0).astype(np.uint8)
    mask = mask.convert("L")
    peak = int(np.asarray(mask).max())
    if 0 < peak < 255:
        if rule == "truncate":  # under "nonzero" these pixels count anyway: nothing to say
            warnings.warn(f"{path}: mask values reach only {peak}, not 255; treating every non-zero pixel "
                          f"as defective", stacklevel=2)
        mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    resized = np.asarray(mask.resize((width, height), Image.BILINEAR))
    binary = resized == 255 if rule == "truncate" else resized > 0
    return binary.astype(np.uint8)


def subset_groups(samples: Sequence[Sample]) -> list[str]:
    """What subsets are stratified by: each image's defect type (the image's folder in the
    reference's layouts; Real-IAD keeps one folder per part, so the folder would not do)."""
    return [sample.defect_type for sample in samples]


def subsets(groups: Sequence[str], divide_num: int, seed: int) -> list[list[int]]:
    """Indices of each subset (docs/METHOD.md 1.4), from each image's group (``subset_groups``):
    stratified by group, the same shuffle each time."""
    if divide_num == 1:
        return [list(range(len(groups)))]
    members_of: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members_of.setdefault(group, []).append(index)
    result = []
    for part in range(divide_num):
        generator = random.Random(seed)  # the reference's random.seed + random.shuffle, without shared state
        chosen = []
        for members in members_of.values():
            shuffled = list(members)
            generator.shuffle(shuffled)
            chosen.extend(shuffled[part::divide_num])
        result.append(chosen)
    return result
