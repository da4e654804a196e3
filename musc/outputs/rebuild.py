"""Rebuild reports from artifacts alone (``musc report``), and remove what no run uses
(``musc clean``): no backbone, no stage recomputed.

Every path written here is derived from the artifact's own location (the folder beside it), never
from paths stored inside an artifact: a copied artifacts folder writes into the copy, and a
crafted artifact cannot send writes elsewhere. ``musc report --to ELSEWHERE`` writes the same
folders under ELSEWHERE instead, laid out as they lie under the folder given, and nothing beside
the artifacts (a read-only artifacts folder: no lock, no verification record).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..store import (ARTIFACTS_MARKER, STAGES, ArtifactError, NoSpaceError, ReadOnlyLocation, catalog, open_artifact,
                     read_only, report_folder, unless_running, valid_digest, writing_in)
from ..store import alone, naming
from . import guarding
from .reports import dataset_report, evaluate_into

REPORT_FILES = catalog.REPORT.essential  # what an evaluation's folder holds


def find_input(artifact_path: Path, stage: str, digest: str) -> Path:
    """The upstream artifact (in the sibling stage folder) whose digest an artifact recorded: the
    candidate whose manifest records that digest, verified (no other file is read)."""
    for candidate in catalog.candidates(artifact_path, stage, digest):
        if valid_digest(candidate, stage) == digest:
            return candidate
    raise ArtifactError(f"{artifact_path}: its {stage} input (digest {digest[:12]}) is missing or changed")


def inputs_of(artifact_path: str | Path, stage: str) -> list[Path]:
    """The artifacts of ``stage`` an artifact was made from, in role order (classify: one score
    artifact per degree)."""
    recorded = open_artifact(artifact_path).inputs
    return [find_input(Path(artifact_path), stage, recorded[role]) for role in catalog.roles_of(recorded, stage)]


def resolved_inputs(artifact_path: str | Path) -> dict[str, dict[str, str | None]]:
    """Each recorded input of an artifact: its digest and the file it is now (an upstream artifact
    found beside it and verified), or None with why (missing or changed; an image, named by
    content only)."""
    path = Path(artifact_path)
    resolved: dict[str, dict[str, str | None]] = {}
    for role, digest in open_artifact(path).inputs.items():
        entry: dict[str, str | None] = {"digest": digest, "file": None, "why": None}
        if catalog.role_stage(role) in catalog.ROOT_STAGES:
            try:
                entry["file"] = str(find_input(path, catalog.role_stage(role), digest))
            except ArtifactError as error:
                entry["why"] = str(error).split(": ", 1)[-1]
        else:
            entry["why"] = "not an artifact of this root (named by its content)"
        resolved[role] = entry
    return resolved


def located_records(artifact_path: str | Path) -> dict[str, str]:
    """The paths an artifact records, found where they are now (``musc inspect --json``): an
    extract's dataset root (``root``: ``store.naming.dataset_root``), an evaluate's report folder
    (``outputs``: the folder beside it, whatever it recorded)."""
    path = Path(artifact_path)
    artifact = open_artifact(path)
    if artifact.stage == "extract" and "root" in artifact.attrs:
        return {"root": str(naming.dataset_root(str(artifact.attrs["root"]), artifact.attrs.get("artifacts"),
                                                catalog.located(path).root))}
    if artifact.stage == "evaluate":
        return {"outputs": str(report_folder(path))}
    return {}


@dataclass
class Rebuilt:
    written: list[Path] = field(default_factory=list)           # the category pages (report.html) written
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # stale evaluate artifacts, and why
    pages: list[Path] = field(default_factory=list)             # the dataset pages (_report/index.html) written


def rebuild_reports(path: str | Path, to: str | Path | None = None) -> Rebuilt:
    """Reports of one evaluate artifact (an error if it is stale), or of every current one under a
    folder; stale ones (an input missing or changed since) are skipped and named. Given a folder
    that holds a dataset's whole folder (an artifacts root, or the dataset's folder), that
    dataset's page (``_report/index.html``) is made again too, from the current evaluations of its
    categories (``dataset_pages``). ``to``: the folder the reports go to (see the module's
    docstring), else beside the artifacts."""
    path = Path(path)
    targets = [path] if path.is_file() else [target for target in catalog.artifacts_below(path, "evaluate")
                                             if _stays_under(path, target.parent)]
    if not targets:
        raise ArtifactError(f"{path}: no evaluate artifacts found")
    place = _Placement(path, None if to is None else Path(to))
    result, current = Rebuilt(), []
    with read_only() if to is not None else contextlib.nullcontext():
        for target in targets:
            try:
                result.written.append(rebuild_one(target, place.report(target)))
                current.append(target)
            except (NoSpaceError, ReadOnlyLocation):  # the place written, not the artifact: stops the command
                raise
            except ArtifactError as error:
                if path.is_file():
                    raise
                result.skipped.append((target, str(error).splitlines()[0]))
        if not result.written:
            raise ArtifactError(f"{path}: no current evaluate artifact ({len(result.skipped)} stale: "
                                f"{result.skipped[0][1]})")
        if path.is_dir():  # a dataset's page only where every category of it was looked at
            whole = path.resolve()
            result.pages = dataset_pages([t for t in current
                                          if whole == (dataset := catalog.located(t.resolve()).dataset_folder)
                                          or whole in dataset.parents], place)
    return result


@dataclass
class _Placement:
    """Where the reports of the artifacts found under ``given`` go: beside them, or (``to``) under
    ``to`` as they lie under ``given`` (a single artifact's: ``to/<key>``)."""
    given: Path
    to: Path | None = None

    def _moved(self, folder: Path) -> Path:
        if self.to is None:
            return folder
        base = self.given if self.given.is_dir() else self.given.parent
        return self.to / Path(os.path.abspath(folder)).relative_to(os.path.abspath(base))

    def report(self, evaluation: Path) -> Path:
        return self._moved(report_folder(evaluation))

    def dataset(self, root: Path, dataset: str) -> Path:
        return self._moved(catalog.dataset_report_folder(root, dataset))


def _stays_under(root: Path, folder: Path) -> bool:
    """Whether ``folder`` (found under ``root``) is reached without a symlink. A symlinked dataset,
    category or stage folder leads elsewhere (out of the root, or to another folder inside it
    under a second name): it is skipped with a warning, and nothing is written or removed there."""
    real = root.resolve() / folder.relative_to(root)
    if folder.resolve() == real:
        return True
    warnings.warn(f"{folder}: a symlink (to {folder.resolve()}) under {root}; skipped, nothing written or "
                  "removed there", stacklevel=3)
    return False


def check_report_folder(folder: Path) -> None:
    """ArtifactError unless writing the report folder writes only there: neither it nor anything in
    it is a symlink (a report written through one would land elsewhere)."""
    folder = Path(folder)
    links = [folder] if folder.is_symlink() else [p for p in folder.rglob("*") if p.is_symlink()]
    if links:
        raise ArtifactError(f"{links[0]}: a symlink (to {links[0].resolve()}) in the place of a report folder "
                            "or file; refusing to write through it (remove it and rerun)")


def rebuild_one(target: Path, folder: Path | None = None) -> Path:
    """The reports of one evaluate artifact, drawn again from its artifacts into its report folder
    (or ``folder``: the guard's record, if any, is carried there); returns report.html."""
    own = report_folder(target)
    folder = own if folder is None else Path(folder)
    check_report_folder(folder)
    evaluation = open_artifact(target, "evaluate")
    extract = open_artifact(find_input(target, "extract", evaluation.inputs["extract"]), "extract")
    classify = open_artifact(find_input(target, "classify", evaluation.inputs["classify"]), "classify")
    if folder != own and (guard := guarding.read_guard(own)) is not None:
        with writing_in(folder.parent):
            folder.mkdir(parents=True, exist_ok=True)
        if guard.get("artifact"):  # named from its own folder: named again from the new one
            guard = {**guard, "artifact": os.path.abspath(naming.linked(guard["artifact"], own))}
        guarding.write_guard(folder, guard)
    evaluate_into(folder, extract, classify, evaluation.config, str(target))
    return folder / catalog.REPORT.html


def dataset_pages(current: list[Path], place: _Placement | None = None) -> list[Path]:
    """The page of each dataset (``<root>/<dataset>/_report``, or where ``place`` puts it) the
    current evaluate artifacts ``current`` belong to: per category its newest evaluation (by its
    recorded creation time), the image size and mask rule of the newest one. Returns the
    index.html pages written."""
    place = place or _Placement(Path("."))
    newest: dict[tuple[Path, str], dict[str, Path]] = {}
    for target in current:
        where = catalog.located(target)
        root, dataset, category = where.root, where.dataset, where.category
        chosen = newest.setdefault((root, dataset), {})
        if category not in chosen or _age(target) > _age(chosen[category]):
            chosen[category] = target
    pages = []
    for (root, dataset), chosen in sorted(newest.items()):
        evaluations = {name: open_artifact(chosen[name], "evaluate") for name in sorted(chosen)}
        latest = max(chosen.values(), key=_age)
        extract = open_artifact(find_input(latest, "extract", open_artifact(latest, "evaluate").inputs["extract"]),
                                "extract")
        _, page = dataset_report(place.dataset(root, dataset), dataset,
                                 {name: json.loads(e.attrs["metrics"]) for name, e in evaluations.items()},
                                 {name: str(place.report(chosen[name])) for name in evaluations},
                                 int(extract.config["image_size"]), str(extract.attrs.get("mask_rule", "")))
        pages.append(page)
    return pages


def _age(evaluation: Path) -> tuple[str, int]:
    """When an evaluate artifact was made: its recorded creation time, then its file's."""
    return str(open_artifact(evaluation, "evaluate").attrs.get("created", "")), evaluation.stat().st_mtime_ns


# musc clean ---------------------------------------------------------------------------------------

def _upstream(path: Path) -> list[Path]:
    """The artifacts an artifact was made from (its recorded input digests, found in the sibling
    stage folders); ArtifactError when one is missing or changed."""
    artifact = open_artifact(path)
    if artifact.stage == "extract":  # its inputs are images, not artifacts
        return []
    return [find_input(path, catalog.role_stage(role), digest) for role, digest in artifact.inputs.items()
            if catalog.role_stage(role) in catalog.ROOT_STAGES]


def in_use(root: str | Path) -> set[Path]:
    """Every artifact an intact run uses: each evaluate artifact (a batch's) and decide artifact (a
    day's of the line) whose whole chain of inputs is present and valid, and that chain (classify,
    scores, aggregates, extract; pool scores and features)."""
    used: set[Path] = set()
    for evaluation in catalog.chain_heads(root):
        chain, todo = {evaluation}, [evaluation]
        try:
            while todo:
                for upstream in _upstream(todo.pop()):
                    if upstream not in chain:
                        chain.add(upstream)
                        todo.append(upstream)
        except ArtifactError:
            continue  # a stale evaluate artifact: neither it nor its remains are in use
        used |= chain
    for guard in catalog.artifacts_of(root, "guard"):  # a run's guard (--reference) stays with its run
        try:
            if find_input(guard, "evaluate", open_artifact(guard, "guard").inputs["evaluate"]) in used:
                used.add(guard)
        except (ArtifactError, KeyError):
            continue
    return used


def clean_artifacts(root: str | Path, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Remove what no intact run uses (see ``in_use``) from the stage folders under ``root``: other
    artifacts with their manifests, ``.parts`` folders, report folders, lock and temporary files.
    Returns (removed, busy): busy ones are being built by a running command and are kept."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifacts folder")
    if not (root / ARTIFACTS_MARKER).is_file():
        raise ArtifactError(f"{root}: not a musc artifacts folder (no {ARTIFACTS_MARKER}); nothing removed")
    used = in_use(root)
    removed, busy = [], []
    for folder in [f for f in catalog.stage_folders(root, STAGES) if _stays_under(root, f)]:
        keys = {catalog.key_of(entry) for entry in folder.iterdir()} - {None}
        with unless_running(folder.parent) as idle:  # a run of this category: keep all it may build
            for key in sorted(keys):
                artifact = folder / f"{key}.h5"
                if artifact in used:
                    continue
                victims = catalog.side_files(artifact)
                with alone(catalog.lock_path(artifact)) as free:  # nobody builds it now
                    if not (free and idle):
                        busy.append(artifact)
                        continue
                    for victim in victims:
                        removed.append(victim)
                        if not dry_run:
                            _remove(victim)
    return removed, busy


def _remove(path: Path) -> None:
    """Remove a file or folder; a removal the file system refuses (a read-only folder) is one line."""
    with writing_in(path.parent):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=_unless_gone)
        else:
            path.unlink(missing_ok=True)


def _unless_gone(function, path, info) -> None:
    if not isinstance(info[1], FileNotFoundError):  # gone meanwhile: removed all the same
        raise info[1]
