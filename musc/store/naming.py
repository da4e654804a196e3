"""How an output names a path: the one rule (docs/ARTIFACTS.md, "Paths in outputs", prints the text
below).

Outputs name paths (the functions named: musc/store/naming.py) so that they travel (an artifacts
root and its dataset moved, copied, or opened on another machine) and name no folder of the worker
that no person typed:

- An input image: relative to the dataset root it was read from (`image_name`; read back with
  `image_file`): the extract's `paths`, the `path` column of per_image.csv.
- A file the outputs made (an overlay, a thumbnail, a mask, a figure, a report, an artifact): relative
  to the folder of the file that names it, `..` included (`link`; read back with `linked`): a CSV's
  or a page's own folder (per_image.csv's `map_png`, `mask_png`, `thumb_png`; the links of report.md
  and report.html), and an HDF5 artifact's own folder for its attributes (the evaluate's `outputs`).
- A path a person gave, recorded in a file beside others (a day's artifacts root, pool and images
  folder in its `day.json`; the pool in a guard artifact; a part's file in a day's `scores.csv`):
  relative to the folder of the file that records it when it lies under that folder or was given
  relative, as given when it was given absolute and lies outside (`named_from`; read back with
  `named_in`; carried to another recording folder by `rebased`).
- The dataset root and the artifacts folder: as the person gave them, relative or absolute
  (`as_given`): the extract's `root` and `artifacts`. A relative dataset root is found again under
  the folder the run was started in, which the artifacts folder as given tells from where the
  artifacts root lies now, else under the current folder (`dataset_root`); the Prefect UI names
  the files under the artifacts folder as given (`under_given`).

Outputs of earlier versions named absolute paths: an absolute name is read back as it is.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath


def as_given(path: str | Path) -> str:
    """A folder a person gave (the dataset root, the artifacts folder), as it is recorded: as given."""
    return os.fspath(path)


def named_from(path: str | Path, base: str | Path) -> str:
    """A path a person gave (``path``: as given, relative to the working directory or absolute), as a
    file in ``base`` records it: relative to ``base`` (``..`` included) unless given absolute and
    outside ``base``, then as given."""
    whole, top = os.path.abspath(path), os.path.abspath(base)
    if Path(whole).is_relative_to(top) or not Path(path).is_absolute():
        return Path(os.path.relpath(whole, top)).as_posix()
    return os.fspath(path)


def named_in(name: str | Path, base: str | Path) -> Path:
    """The path a file in ``base`` records (``named_from``)."""
    return Path(base) / name


def rebased(name: str | Path, base: str | Path, to: str | Path) -> str:
    """A path recorded in ``base`` (``named_from``) as a file in ``to`` records it: an absolute one as
    it is, a relative one relative to ``to``."""
    if Path(name).is_absolute():
        return os.fspath(name)
    return Path(os.path.relpath(os.path.abspath(named_in(name, base)), os.path.abspath(to))).as_posix()


def image_name(path: str | Path, root: str | Path) -> str:
    """An input image as outputs name it: relative to the dataset root ``root`` (POSIX separators);
    whole where it lies outside the root."""
    whole, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return whole.relative_to(top).as_posix() if whole.is_relative_to(top) else os.fspath(path)


def image_file(name: str | Path, root: str | Path) -> Path:
    """The image an output names (``image_name``), under the dataset root ``root`` where it is now."""
    return Path(root) / name


def link(path: str | Path, folder: str | Path) -> str:
    """A file the outputs made, as a file in ``folder`` names it: relative to ``folder`` (POSIX
    separators; ``..`` where it lies beside or above it)."""
    return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(folder))).as_posix()


def linked(name: str | Path, folder: str | Path) -> Path:
    """The file a file in ``folder`` names (``link``)."""
    return Path(folder) / name


def under_given(path: str | Path, artifacts: str | Path, given: str | None) -> str:
    """A file under the artifacts root ``artifacts`` as a person names it: under the artifacts folder
    as they gave it (``given``; None: as ``path`` is)."""
    if given is None:
        return os.fspath(path)
    return (Path(given) / os.path.relpath(os.path.abspath(path), os.path.abspath(artifacts))).as_posix()


def started_in(given: str | None, artifacts_now: str | Path) -> Path | None:
    """The folder a run was started in, told by the artifacts folder as it was given (relative, and
    not above that folder) and where the artifacts root lies now; None where it cannot tell."""
    if not given:
        return None
    parts = PurePath(os.path.normpath(given)).parts
    if PurePath(given).is_absolute() or ".." in parts:
        return None
    now = Path(os.path.abspath(artifacts_now))
    depth = len([p for p in parts if p != "."])
    return now if depth == 0 else now.parents[depth - 1] if depth <= len(now.parents) else None


def dataset_root(root: str, given_artifacts: str | None, artifacts_now: str | Path) -> Path:
    """The dataset root an artifact recorded (``root``, as given), where it is now: an absolute one as
    it is; a relative one under the folder the run was started in (``started_in``) where it is a
    folder there, else under the current folder."""
    if Path(root).is_absolute():
        return Path(root)
    started = started_in(given_artifacts, artifacts_now)
    places = ([started / root] if started is not None else []) + [Path(os.path.abspath(root))]
    return next((place for place in places if place.is_dir()), places[0])
