"""What every stage task shares: one cache mechanism, with the artifact on disk as the truth.

A stage's artifact lives at a path whose name is the stage's cache key (its settings, its input
digests, its code version). A task plans that path, and builds the artifact only when no valid one
is there (under a lock: two runs never build it twice). A reused artifact ends the task in the
state Prefect calls Cached, so the UI shows what was reused. Prefect's own result cache is off:
task results are small references ({stage, path, digest}), never pickles, and a deleted or
corrupt artifact is rebuilt, with everything downstream of it (its digest changes).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.states import Completed

from musc import store
from musc.store.schema import stage_schema

Ref = dict[str, str]  # {"stage", "path", "digest"}: what tasks pass to each other
Plan = tuple[Path, Callable[[Path], None]]  # a stage's artifact path, and how to build it there


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("musc")


def code_version(stage: str) -> str:
    return stage_schema(stage).code_version


def stage_folder(ref_path: str | Path, stage: str) -> Path:
    """The folder of ``stage`` beside an upstream artifact (same dataset and category)."""
    return Path(ref_path).parents[1] / stage


def valid_ref(stage: str, path: Path) -> Ref | None:
    """The reference of a valid artifact at ``path``, or None (missing, partial, corrupt)."""
    digest = store.valid_digest(path, stage)
    return None if digest is None else {"stage": stage, "path": str(path), "digest": digest}


def ensure_artifact(stage: str, path: Path, build: Callable[[Path], None]) -> tuple[Ref, bool]:
    """(reference, reused): the artifact at ``path`` if valid, else built there under a lock."""
    digest = store.valid_digest(path, stage)
    reused = digest is not None
    if reused:
        logger().info(f"{stage}: reusing {path}")
        store.clear_parts(path)  # parts a concurrent run may have left: the artifact is complete
    else:
        with store.artifact_lock(path):
            digest = store.valid_digest(path, stage)  # another run may have built it while we waited
            reused = digest is not None
            if not reused:
                if path.exists():
                    logger().warning(f"{stage}: {path} is partial or corrupt; rebuilding it")
                store.remove_artifact(path)
                store.clear_temporary_files(path)
                logger().info(f"{stage}: computing {path}")
                build(path)
                digest = store.verify(path, stage)
    return {"stage": stage, "path": str(path), "digest": digest}, reused


def stage_task(stage: str, **options: Any) -> Callable[[Callable[..., Plan]], Any]:
    """Make ``plan_fn(**params) -> (path, build)`` a Prefect task returning the artifact's Ref."""

    def decorate(plan_fn: Callable[..., Plan]) -> Any:
        @functools.wraps(plan_fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            path, build = plan_fn(*args, **kwargs)
            ref, reused = ensure_artifact(stage, path, build)
            return Completed(data=ref, name="Cached", message=f"reused {path}") if reused else ref

        return task(name=stage, cache_policy=NO_CACHE, persist_result=False, **options)(run)

    return decorate
