"""Rebuild reports from artifacts alone (``musc report``): no backbone, no stage recomputed."""
from __future__ import annotations

from pathlib import Path

from .report import write_outputs
from .store import ArtifactError, open_artifact, valid_digest


def find_input(artifact_path: Path, stage: str, digest: str) -> Path:
    """The upstream artifact (in the sibling stage folder) whose digest an artifact recorded."""
    for candidate in sorted((artifact_path.parents[1] / stage).glob("*.h5")):
        if valid_digest(candidate, stage) == digest:
            return candidate
    raise ArtifactError(f"{artifact_path}: its {stage} input (digest {digest[:12]}) is missing or changed")


def rebuild_reports(path: str | Path) -> list[Path]:
    path = Path(path)
    targets = [path] if path.is_file() else sorted(path.rglob("evaluate/*.h5"))
    if not targets:
        raise ArtifactError(f"{path}: no evaluate artifacts found")
    written = []
    for target in targets:
        evaluation = open_artifact(target, "evaluate")
        extract = open_artifact(find_input(target, "extract", evaluation.inputs["extract"]), "extract")
        classify = open_artifact(find_input(target, "classify", evaluation.inputs["classify"]), "classify")
        folder = Path(evaluation.attrs["outputs"])
        config = evaluation.config
        write_outputs(extract, classify, folder, config.get("threshold"), config.get("overlays", "set"), str(target),
                      config.get("pixel_threshold"))
        written.append(folder / "report.md")
    return written


def input_path(artifact_path: str | Path, stage: str) -> Path:
    return find_input(Path(artifact_path), stage, open_artifact(artifact_path).inputs[stage])
