"""What every dataset layout shares: a category's samples, the folders a listing never reads (our
outputs), masks looked up by name in a folder listed once, warnings said once, and paths that must
stay inside the dataset's root."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ...errors import DatasetError
from ..images import IMAGE_SUFFIXES
from ...method.checks import MIN_IMAGES, TooFewImages, check_image_count
from ...method.subsets import subsets
from ...store.catalog import ARTIFACTS_MARKER


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
    root: str                   # the dataset root as the person gave it (recorded so: musc/store/naming.py)
    samples: tuple[Sample, ...]
    mask_rule: str = "nonzero"  # how its resized masks are binarised (the layout's rule: docs/METHOD.md 1.3)
    folder: str = ""            # the dataset root resolved when the category was loaded ("": ``root`` resolved)

    @property
    def root_folder(self) -> str:
        """The dataset root as a folder, whatever the current folder is now."""
        return self.folder or str(Path(self.root).resolve())

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


def subset_groups(samples: Sequence[Sample]) -> list[str]:
    """What subsets are stratified by: each image's defect type (the image's folder in the
    reference's layouts; Real-IAD keeps one folder per part, so the folder would not do)."""
    return [sample.defect_type for sample in samples]


def inside(root: Path, path: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(f"{what}: {path} points outside the dataset root {root}")
    return resolved


class Excluded:
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


class MaskFolder:
    """The mask files of one folder, listed once and looked up by an image's stem: ``<stem>_mask`` or
    ``<stem>``, whatever the image suffix of either (BTAD's product 03 keeps ``.bmp`` masks where 01
    and 02 keep ``.png``). No path is probed by name, so a mask name too long for the file system is
    simply absent, never an error, and a folder of many masks is read once."""

    def __init__(self, folder: Path, files: Iterable[Path] | None = None):
        self.folder = folder
        self.stems: dict[str, list[Path]] = {}
        self.folders: set[str] = set()  # its subfolders' names (MVTec LOCO, AutoVI: one per image)
        if files is None:
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
            self.folders = {p.name for p in entries if p.is_dir()}
            files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        for path in sorted(files):
            self.stems.setdefault(path.stem, []).append(path)

    def of(self, image: Path) -> Path | None:
        """The mask of ``image``; DatasetError naming both when two files could be it."""
        found = [m for m in self.stems.get(f"{image.stem}_mask", []) + self.stems.get(image.stem, [])
                 if m != image]
        if len(found) > 1:
            raise DatasetError(f"{image}: two masks, {found[0].name} and {found[1].name} in {self.folder} "
                               f"(one mask per image)")
        return found[0] if found else None


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the file system refuses (too long) is no file."""
    try:
        return path.is_file()
    except OSError:
        return False


_warned: set[str] = set()


def warn_once(message: str, where: Path) -> None:
    """A dataset warning once per process and dataset folder, however often the category is listed
    (the command line checks it before the flow, and the flow again)."""
    key = f"{Path(where).resolve()}\n{message}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def check_category_name(category: str) -> None:
    """A category becomes a folder name under the artifacts root: one plain name, nothing that
    leads elsewhere (``..``, separators, an absolute path)."""
    text = str(category)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or Path(text).is_absolute() or text != text.strip()):
        raise DatasetError(f"category: {text!r} is not a plain folder name (no '/', '..' or absolute paths)")
