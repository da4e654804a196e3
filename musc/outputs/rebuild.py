"""Rebuild reports from artifacts alone (``musc report``): no backbone, no stage recomputed."""
from __future__ import annotations

from pathlib import Path

from ..store import ArtifactError, open_artifact, valid_digest
from .evaluation import evaluate
from .reports import write_outputs


def outputs_folder(evaluate_path: str | Path) -> Path:
    """Where an evaluate artifact's CSV, Markdown and figures live: the folder beside it."""
    return Path(evaluate_path).with_suffix("")


def find_input(artifact_path: Path, stage: str, digest: str) -> Path:
    """The upstream artifact (in the sibling stage folder) whose digest an artifact recorded."""
    for candidate in sorted((Path(artifact_path).parents[1] / stage).glob("*.h5")):
        if valid_digest(candidate, stage) == digest:
            return candidate
    raise ArtifactError(f"{artifact_path}: its {stage} input (digest {digest[:12]}) is missing or changed")


def input_path(artifact_path: str | Path, stage: str) -> Path:
    return find_input(Path(artifact_path), stage, open_artifact(artifact_path).inputs[stage])


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
        config = evaluation.config
        decided = evaluate(extract, classify, config.get("threshold"), config.get("pixel_threshold"))
        written.append(write_outputs(extract, classify, decided, Path(evaluation.attrs["outputs"]),
                                     config.get("overlays", "set"), str(target)))
    return written
