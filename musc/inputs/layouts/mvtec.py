"""The layouts in MVTec AD's manner: ``<category>/<test>/<type>/<image>``, one folder per defect type
and one of normal images, masks under ``<category>/<ground_truth>/<type>/``: MVTec AD, BTAD, MPDD,
MVTec AD 2 (its private test sets scored as categories of their own), MVTec LOCO and AutoVI (a
folder of masks per image). Image order follows the reference: defect types sorted by name, file
names sorted within each type."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import DatasetError
from ..images import IMAGE_SUFFIXES, images_in
from .common import Excluded, MaskFolder, Sample, inside, warn_once
from .registry import Layout, register


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


def folder_categories(name: str):
    """The categories of a layout in MVTec AD's manner: the folders below the root holding its test folder."""
    test = FOLDER_LAYOUTS[name].test

    def categories(root: Path, ours: Excluded) -> list[str]:
        folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not ours(p)]
        return sorted(p.name for p in folders if (p / test).is_dir())
    return categories


def folder_samples(name: str):
    """The images of a category of a layout in MVTec AD's manner (MVTec AD 2: its private sets too)."""
    def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
        if name == "mvtec_ad2" and (private := _ad2_private_set(root, category)):
            return str(category), _ad2_private_samples(root, str(category), private)
        return str(category), _mvtec_style_samples(root, category, name, ours)
    return samples


def _no_category_folder(dataset: str, root: Path, category: str, folder: Path) -> DatasetError:
    known = ", ".join(folder_categories(dataset)(root, Excluded())) or "none"
    return DatasetError(f"category {category!r}: no folder {folder} (categories here: {known})")


def _mvtec_style_samples(root: Path, category: str | None, dataset: str, ours: Excluded) -> list[Sample]:
    if not category:
        raise DatasetError("category: this layout needs a category name")
    layout = FOLDER_LAYOUTS[dataset]
    test = root / category / layout.test
    if not test.is_dir():
        raise _no_category_folder(dataset, root, category, test)
    ground_truth = root / category / layout.ground_truth
    samples, missing_masks = [], []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir() and p != ground_truth and not ours(p)):
        defect = type_dir.name
        masks_dir = ground_truth / defect
        images = images_in(type_dir)
        stems = [p.stem for p in images]
        shared = sorted({stem for stem in stems if stems.count(stem) > 1})
        if shared:
            warn_once(f"category {category!r}: images in {defect}/ share a name ({', '.join(shared[:3])}) "
                       f"and so their mask", type_dir)
        anomalous = defect != layout.normal
        if layout.strict and anomalous and images and not masks_dir.is_dir():
            raise DatasetError(f"{masks_dir}: no ground-truth folder for the {len(images)} image(s) in {type_dir}")
        claimed: set[Path] = set()
        listed = MaskFolder(masks_dir) if anomalous else None  # listed once, looked up by name
        for image in images:
            mask = _masks_of(root, image, listed, layout) if listed is not None else None
            if mask is None and anomalous and masks_dir.is_dir():
                missing_masks.append(f"{defect}/{image.name}")
            claimed.update(Path(m) for m in ([mask] if isinstance(mask, str) else mask or ()))
            samples.append(Sample(str(inside(root, image, "image")), f"{defect}/{image.name}", defect,
                                  int(anomalous), mask))
        if layout.strict and masks_dir.is_dir():
            _refuse_unclaimed_masks(masks_dir, claimed, layout.mask_folders, type_dir, ours)
    if missing_masks:
        warn_once(f"category {category!r}: {len(missing_masks)} anomalous image(s) have no mask "
                   f"(first: {missing_masks[0]}); pixel metrics leave them out", test)
    return samples


def _masks_of(root: Path, image: Path, masks: MaskFolder, layout: FolderLayout) -> str | tuple[str, ...] | None:
    """An anomalous image's mask, found by the image's stem whatever the suffix of either
    (``<stem>_mask.png``, ``<stem>.png``, BTAD's ``<stem>.bmp``; two of them: an error), or for
    layouts with a folder of masks per image the masks in ``<masks_dir>/<image stem>/``; None if it
    has none."""
    if layout.mask_folders:
        folder = masks.folder / image.stem
        if image.stem not in masks.folders:
            return None
        found = images_in(folder)
        if not found:
            raise DatasetError(f"{folder}: a mask folder holding no mask (for the image {image})")
        return tuple(str(inside(root, m, "mask")) for m in found)
    mask = masks.of(image)
    return str(inside(root, mask, "mask")) if mask else None


def _refuse_unclaimed_masks(masks_dir: Path, claimed: set[Path], folders: bool, images: Path, ours: Excluded) -> None:
    """DatasetError naming the first mask (or, where masks come in a folder per image, mask folder)
    in ``masks_dir`` that no image claims (an artifacts folder of ours there is none)."""
    claimed = {path.resolve() for path in claimed} | ({path.resolve().parent for path in claimed} if folders else set())
    for entry in sorted(masks_dir.iterdir()):
        mask_like = ((entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES)
                     or (folders and entry.is_dir() and not ours(entry)))
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
        known = ", ".join(f"{name}{suffix}" for name in folder_categories("mvtec_ad2")(root, Excluded())
                          for suffix, private in AD2_PRIVATE_SETS.items() if (root / name / private).is_dir())
        raise DatasetError(f"category {category!r}: no folder {folder} (private test sets here: {known or 'none'})")
    return [Sample(str(inside(root, image, "image")), image.name, "", None, None) for image in images_in(folder)]




# How a resized mask becomes binary (docs/METHOD.md 1.3): MVTec AD and BTAD truncate (only 255
# survives, eroding edges), as the reference's loader does, and so MPDD, read in MVTec AD's layout
# by MVTec AD's loader; the others keep every non-zero pixel (dilating edges), as the other
# datasets' own evaluations count a ground-truth pixel: any value but 0 is defective.
register(*(Layout(name, rule, folder_categories(name), folder_samples(name))
           for name, rule in (("mvtec_ad", "truncate"), ("btad", "truncate"), ("mpdd", "truncate"),
                              ("mvtec_ad2", "nonzero"), ("mvtec_loco", "nonzero"), ("autovi", "nonzero"))))
