"""The catalog of an artifacts root, declared once: where each artifact lives, the files beside it,
the names of its inputs, and how to find the artifacts it was made from.

Layout::

    <root>/.musc-artifacts                          marker: listings never read this folder back
    <root>/<dataset>/<category>/<stage>/<key>.h5    an artifact (``artifact_path``)
        <key>.json                                  its manifest (SHA-256 and size)
        .<key>.h5.verified                          identity of the file when its SHA-256 last matched
        .<key>.h5.lock                              the lock it is built under
        .<key>.h5.tmp-<pid>-<thread>                a write in progress (``temporary_path``)
        <key>.parts/                                batches or tiles of a long stage, kept for resuming
        <key>/                                      reports and figures of an evaluate artifact
    <root>/<dataset>/_report/                       the dataset's page, metrics table and chart

Input roles: an artifact records the digest of each input under a role name. A role is the input's
stage name, or ``<stage>_<i>`` for the i-th of several inputs of one stage (classify's ``score_0``,
``score_1``: one per degree r). ``role_name`` writes them and ``role_stage`` reads them back.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import MuscError
from .schema import STAGES

ARTIFACTS_MARKER = ".musc-artifacts"
DATASET_REPORT = "_report"
LINE = "line"  # the dataset folder of the line's artifacts: <root>/line/<category>/<stage>/<key>.h5
KEY_PATTERN = re.compile(r"[0-9a-f]{16}")  # what ``stable_hash`` makes: nothing else in a stage folder is ours
_SIDE_FILE = re.compile(r"^\.(?P<key>.+?)\.(h5|json)\.(lock|verified|(?:verified\.)?tmp-.*)$")


class ArtifactError(MuscError, RuntimeError):
    """An artifact is missing, partial, corrupt or foreign, or a name would lead out of the artifacts
    root; the message names the file or field."""


def _plain(what: str, name: str, root: str | Path) -> str:
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ArtifactError(f"{what}: {text!r} is not a plain folder name; artifacts stay under {root}")
    return text


# Where things are ---------------------------------------------------------------------------------

def category_folder(root: str | Path, dataset: str, category: str) -> Path:
    return Path(root) / _plain("dataset", dataset, root) / _plain("category", category, root)


def artifact_path(root: str | Path, dataset: str, category: str, stage: str, key: str) -> Path:
    """``<root>/<dataset>/<category>/<stage>/<key>.h5``; each part one plain folder name."""
    return category_folder(root, dataset, category) / _plain("stage", stage, root) / f"{_plain('key', key, root)}.h5"


def sibling_path(artifact: str | Path, stage: str, key: str) -> Path:
    """An artifact of ``stage`` in the same category as ``artifact``."""
    return stage_folder(artifact, stage) / f"{key}.h5"


def stage_folder(artifact: str | Path, stage: str) -> Path:
    """The folder of ``stage`` beside an artifact (same dataset and category)."""
    return Path(artifact).parents[1] / stage


def stage_of(artifact: str | Path) -> str:
    """The stage an artifact's folder says it belongs to."""
    return Path(artifact).parent.name


def dataset_report_folder(root: str | Path, dataset: str) -> Path:
    return Path(root) / _plain("dataset", dataset, root) / DATASET_REPORT


def stage_folders(root: str | Path, stages) -> list[Path]:
    """Every ``<dataset>/<category>/<stage>`` folder under the root, for the given stage names."""
    return sorted(p for p in Path(root).glob("*/*/*") if p.name in stages and p.is_dir())


def evaluate_artifacts(root: str | Path) -> list[Path]:
    return artifacts_of(root, "evaluate")


def artifacts_of(root: str | Path, stage: str) -> list[Path]:
    """The artifacts of ``stage`` under an artifacts root."""
    return sorted(Path(root).glob(f"*/*/{stage}/*.h5"))


def artifacts_below(folder: str | Path, stage: str) -> list[Path]:
    """The artifacts of ``stage`` anywhere below a folder (an artifacts root, a dataset's or a
    category's folder)."""
    return sorted(Path(folder).rglob(f"{stage}/*.h5"))


def category_artifacts(category_folder: str | Path, stage: str) -> list[Path]:
    """The artifacts of ``stage`` of one category (``category_folder``)."""
    return sorted(Path(category_folder).glob(f"{stage}/*.h5"))


@dataclass(frozen=True)
class Location:
    """Where an artifact lies: its artifacts root, dataset, category and stage."""
    root: Path
    dataset: str
    category: str
    stage: str

    @property
    def dataset_folder(self) -> Path:
        return self.root / self.dataset

    @property
    def category_folder(self) -> Path:
        return self.root / self.dataset / self.category


def located(artifact: str | Path) -> Location:
    """The root, dataset, category and stage of ``<root>/<dataset>/<category>/<stage>/<key>.h5``."""
    artifact = Path(artifact)
    return Location(artifact.parents[3], artifact.parents[2].name, artifact.parents[1].name, artifact.parent.name)


CHAIN_HEADS = ("evaluate", "decide")  # the last stage of a batch's chain, of a day's of the line
# the stages whose artifacts lie in an artifacts root (a pool is a file of its own, wherever the user
# keeps it; parts lie inside an artifact's .parts folder)
ROOT_STAGES = tuple(name for name in STAGES if name not in ("pool", "part"))


def chain_heads(root: str | Path) -> list[Path]:
    """The artifacts at the end of a chain under the root: a batch's evaluate, a day's decide."""
    return sorted(p for stage in CHAIN_HEADS for p in Path(root).glob(f"*/*/{stage}/*.h5"))


# The files beside an artifact ---------------------------------------------------------------------

def manifest_path(artifact: str | Path) -> Path:
    return Path(artifact).with_suffix(".json")


def verification_record(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(f".{artifact.name}.verified")


def lock_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(f".{artifact.name}.lock")


def parts_dir(artifact: str | Path) -> Path:
    return Path(artifact).with_suffix(".parts")


def parts_folders(stage_folder: str | Path) -> list[Path]:
    """Every artifact's parts folder in a stage folder."""
    return sorted(p for p in Path(stage_folder).glob("*.parts") if p.is_dir())


def part_path(artifact: str | Path, name: str) -> Path:
    return parts_dir(artifact) / f"{name}.h5"


def is_part(path: str | Path) -> bool:
    return Path(path).parent.suffix == ".parts"


LATEST = "latest.json"  # a category's newest finished run (``latest_path``)


def latest_path(category_folder: str | Path) -> Path:
    """A category's pointer to its newest finished run: its evaluate artifact and report page,
    relative to the category folder (the folder can move), the flow run and when."""
    return Path(category_folder) / LATEST


def run_marker(category_folder: str | Path) -> Path:
    """A category's run marker: every run of the category holds it (shared) while it runs, so
    ``musc clean`` (which needs it alone) never removes what a running command builds."""
    return Path(category_folder) / ".musc-run.lock"


def report_folder(artifact: str | Path) -> Path:
    """Where an evaluate artifact's CSV, Markdown, HTML and figures live: the folder beside it."""
    return Path(artifact).with_suffix("")


def temporary_path(target: str | Path) -> Path:
    """A write in progress of ``target``, in the same folder (so the final rename is atomic), named
    per process and thread (concurrent writers never share one)."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def leftover_writes(folder: str | Path) -> Iterator[Path]:
    """Writes in progress of any file of a folder (``temporary_path``): under the folder's writer's
    lock, what a killed writer left."""
    return Path(folder).glob(".*.tmp-*")


def temporary_files(target: str | Path) -> Iterator[Path]:
    """Writes of ``target`` that a killed writer left behind."""
    target = Path(target)
    return target.parent.glob(f".{target.name}.tmp-*")


def side_files(artifact: str | Path) -> list[Path]:
    """Everything that belongs to one artifact key (what ``musc clean`` removes with it)."""
    artifact = Path(artifact)
    fixed = [artifact, manifest_path(artifact), verification_record(artifact), parts_dir(artifact),
             report_folder(artifact), lock_path(artifact)]
    leftovers = [p for name in (artifact.name, manifest_path(artifact).name)
                 for p in artifact.parent.glob(f".{name}.*tmp-*")]
    return [p for p in fixed if p.exists() or p.is_symlink()] + sorted(set(leftovers))


def key_of(entry: str | Path) -> str | None:
    """The artifact key an entry of a stage folder belongs to (``<key>.h5``, ``<key>.json``,
    ``<key>.parts``, ``<key>/``, ``.<key>.h5.lock``, ``.<key>.h5.verified``, temporary files), or
    None for anything that is not ours."""
    entry = Path(entry)
    name = entry.name
    if name.startswith("."):
        match = _SIDE_FILE.match(name)
        key = match.group("key") if match else None
    elif entry.is_dir():
        key = name.removesuffix(".parts")
    else:
        key = entry.stem if entry.suffix in (".h5", ".json") else None
    return key if key is not None and KEY_PATTERN.fullmatch(key) else None


# The files of the reports beside the artifacts, and of a day's outputs ------------------------------

class REPORT:
    """A category's report folder (beside its evaluate artifact, ``report_folder``) and a dataset's
    page (``dataset_report_folder``): their file names, written once."""
    per_image = "per_image.csv"
    metrics = "metrics.csv"
    metrics_md = "metrics.md"
    markdown = "report.md"
    html = "report.html"
    histograms = "histograms.png"
    guard = "guard.json"
    index = "index.html"
    bars = "metrics_bars.png"

    @staticmethod
    def curves(kind: str) -> str:
        """The ROC / PR curves of ``kind`` (image or pixel)."""
        return f"curves_{kind}.png"

    # what a category's report folder holds once written (a folder missing one is drawn again)
    essential = (metrics, per_image, markdown, html)


class DAY:
    """A day's output folder (the line's: score-new's ``--out``, the daily flow's ``out``): its
    record, its views and the default folder of its artifacts."""
    record = "day.json"
    scores = "scores.csv"
    maps = "maps"
    report = "report.md"
    trend = "trend.png"
    artifacts = "artifacts"


# Files named after an input ------------------------------------------------------------------------

DERIVED_READABLE = 80  # characters of the readable part: with the digest, far below any file-name limit


def derived_name(name: str, suffix: str = ".png", identity: str | None = None) -> str:
    """The one name of every file we derive from an input's name (overlays, thumbnails, binary
    masks, score-new's maps): a readable part (the name without its extension, '/' as '__', other
    characters than letters, digits, '.', '_' and '-' as '_', at most DERIVED_READABLE characters)
    and 8 hex digits of the SHA-256 of the whole name (or of ``identity``, where the name is short
    for something longer: a file's resolved path): distinct names never share a file ('x.y.png' and
    'x_y.png', 'a/b.png' and 'a__b.png', '000.png' and '000.jpg'), and a name of any length gives a
    name the file system takes."""
    text = str(name)
    stem = text.rsplit(".", 1)[0] if "." in text.rsplit("/", 1)[-1] else text
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip(".")[:DERIVED_READABLE] or "image"
    return f"{readable}-{hashlib.sha256((text if identity is None else identity).encode()).hexdigest()[:8]}{suffix}"


# Input roles and lineage --------------------------------------------------------------------------

def role_name(stage: str, index: int | None = None) -> str:
    """The name under which an artifact records an input of ``stage`` (the ``index``-th of several)."""
    return stage if index is None else f"{stage}_{index}"


def role_stage(role: str) -> str:
    """The stage of an input role: ``score_1`` -> ``score``, ``extract`` -> ``extract``."""
    return re.sub(r"_\d+$", "", role)


def roles_of(inputs: dict[str, str], stage: str) -> list[str]:
    """The roles of ``stage`` among an artifact's inputs, in index order."""
    found = [role for role in inputs if role_stage(role) == stage]
    return sorted(found, key=lambda role: int(role.rsplit("_", 1)[1]) if role != stage else -1)


def manifest_digest(artifact: str | Path) -> str | None:
    """The SHA-256 a manifest records (not checked against the file: ``verify`` does that)."""
    try:
        value = json.loads(manifest_path(artifact).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def candidates(artifact: str | Path, stage: str, digest: str) -> list[Path]:
    """The artifacts of ``stage`` beside ``artifact`` whose manifest records ``digest`` (no artifact read)."""
    return [c for c in sorted(stage_folder(artifact, stage).glob("*.h5")) if manifest_digest(c) == digest]
