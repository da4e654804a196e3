"""Real-IAD: one category per camera view (``audiojack_C1`` ... ``audiojack_C5``), its images below
``<category>/OK`` and ``<category>/NG/<defect>/``, the test split from ``realiad_jsons/<category>.json``
when the download has it."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ...errors import DatasetError
from ..images import IMAGE_SUFFIXES
from .common import Excluded, Sample, inside, is_file, warn_once
from .registry import Layout, register

# the camera view in a file name (audiojack_0001_OK_C1_20230922093040.jpg)
REAL_IAD_VIEW = re.compile(r"_(C\d+)(?=_|$)")
# the class of a normal part, in the split files' entries (their meta's normal_class) and folders
REAL_IAD_NORMAL = "OK"


def categories(root: Path, ours: Excluded) -> list[str]:
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not ours(p)]
    return sorted(f"{p.name}_{view}" for p in folders if (p / "OK").is_dir() or (p / "NG").is_dir()
                  for view in _real_iad_views(p, ours))


def samples(root: Path, category: str | None, ours: Excluded) -> tuple[str, list[Sample]]:
    return str(category), _real_iad_samples(root, category, ours)


def _real_iad_views(folder: Path, ours: Excluded) -> list[str]:
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


def _real_iad_samples(root: Path, category: str | None, ours: Excluded) -> list[Sample]:
    """One camera view of a Real-IAD category: the test split of ``realiad_jsons/<name>.json``, or
    without it every image of ``OK/`` and ``NG/`` (zero-shot scoring needs no training split)."""
    match = re.fullmatch(r"(.+)_(C\d+)", category or "")
    if not match:
        known = ", ".join(categories(root, Excluded())[:5]) or "none"
        raise DatasetError(f"category {category!r}: Real-IAD categories are one camera view each, "
                           f"<category>_C1 ... <category>_C5 (here: {known} ...)")
    name, view = match.groups()
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"category {category!r}: no folder {folder} (categories here: "
                           f"{', '.join(categories(root, Excluded())) or 'none'})")
    split = _real_iad_split(root, name)
    if split is None:  # said once for the category's views together
        warn_once(f"category {name!r}: no split file realiad_jsons/{name}.json (looked for "
                  f"{root / 'realiad_jsons' / f'{name}.json'}, and beside {root}); scoring every image in "
                  f"{folder}/OK and {folder}/NG, labelled by their folders (OK: normal)", folder)
        entries = _real_iad_listed(folder, ours)
    else:
        entries = _real_iad_test_split(split, folder)
    samples = []
    for image, defect, mask in entries:
        tag = REAL_IAD_VIEW.search(image.stem)
        if tag is None:
            raise DatasetError(f"{image}: no camera view (_C1_ ... _C5_) in the file name")
        if tag.group(1) == view:
            label = int(defect.upper() != REAL_IAD_NORMAL)  # "ok" as "OK": a normal part
            samples.append(Sample(str(inside(root, image, "image")), image.relative_to(folder).as_posix(),
                                  defect if label else REAL_IAD_NORMAL, label,
                                  str(inside(root, mask, "mask")) if mask else None))
    missing = [s.name for s in samples if s.label == 1 and s.mask_path is None]
    if missing:
        warn_once(f"category {category!r}: {len(missing)} anomalous image(s) have no mask (first: {missing[0]}); "
                   f"pixel metrics leave them out", folder)
    return samples


def _real_iad_test_split(split: Path, folder: Path) -> list[tuple[Path, str, Path | None]]:
    """(image, defect type or "OK", mask) for each test entry of a Real-IAD split file; its paths
    are relative to the category folder. An entry of the meta's normal class (OK, in any case) is
    a normal part."""
    try:
        data = json.loads(split.read_text(encoding="utf-8"))
        entries, normal = data.get("test"), (data.get("meta") or {}).get("normal_class") or REAL_IAD_NORMAL
        if not isinstance(entries, list):
            raise ValueError("no list 'test'")
        rows = [(str(e["image_path"]), str(e["anomaly_class"]), e.get("mask_path") or None) for e in entries]
        rows = [(image, REAL_IAD_NORMAL if defect.upper() == str(normal).upper() else defect, mask)
                for image, defect, mask in rows]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{split}: not a Real-IAD split file (expected a list 'test' of entries with "
                           f"image_path, anomaly_class and mask_path: {error})") from None
    out = []
    for image, defect, mask in rows:
        for path in (image, mask):
            if path and not is_file(folder / path):
                raise DatasetError(f"{split}: lists {folder / path}, which does not exist")
        out.append((folder / image, defect, folder / mask if mask else None))
    return sorted(out, key=lambda row: row[0].relative_to(folder).as_posix())


def _real_iad_listed(folder: Path, ours: Excluded) -> list[tuple[Path, str, Path | None]]:
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




register(Layout("real_iad", "nonzero", categories, samples))
