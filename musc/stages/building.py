"""One cache mechanism, with the artifact on disk as the truth: a stage's plan names its artifact
(the path is the key), and the artifact is built only when no valid one is there, under a lock, so
two runs never build it twice. Used alike by Prefect's tasks, the benchmarks and plain Python."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import store
from .faults import fail_once_point
from .key import Ref, StageKey

log = logging.getLogger("musc.stages")


@dataclass(frozen=True)
class Plan:
    """What one stage will do: its key and artifact path, the upstream references and settings its
    build needs (plain data: it travels to Dask workers), and a label for people ("score r=3")."""
    stage: str
    key: StageKey
    path: str
    label: str
    needs: dict[str, Any] = field(default_factory=dict)

    def build(self, path: Path) -> None:
        from .graph import builder
        builder(self.stage)(path, self)


def valid_ref(stage: str, path: str | Path) -> Ref | None:
    """The reference of a valid artifact at ``path`` that belongs there (its record gives its key),
    or None (missing, partial, corrupt, foreign)."""
    digest = store.valid_digest(path, stage)
    if digest is None:
        return None
    if stage != "part" and store.catalog.KEY_PATTERN.fullmatch(Path(path).stem):
        why = StageKey.mismatch(store.open_artifact(path, stage, digest))
        if why is not None:
            log.warning(f"{stage}: not using {path}: {why}; rebuilding it")
            return None
    return {"stage": stage, "path": str(path), "digest": digest}


def ensure(plan: Plan, build: Callable[[Path], None] | None = None) -> tuple[Ref, bool]:
    """(reference, reused): the plan's artifact if valid, else built there under a lock."""
    fail_once_point(plan.stage)
    path = Path(plan.path)
    ref = valid_ref(plan.stage, path)
    if ref is not None:
        log.info(f"{plan.label}: reusing {path}")
        store.clear_parts(path)  # parts a concurrent run may have left: the artifact is complete
        return ref, True
    with store.artifact_lock(path):
        ref = valid_ref(plan.stage, path)  # another run may have built it while we waited
        if ref is not None:
            return ref, True
        if path.exists():
            log.warning(f"{plan.label}: {path} is partial, corrupt or foreign; rebuilding it")
        store.remove_artifact(path)
        store.clear_temporary_files(path)
        log.info(f"{plan.label}: computing {path}")
        (build or plan.build)(path)
        return {"stage": plan.stage, "path": str(path), "digest": store.verify(path, plan.stage)}, False
