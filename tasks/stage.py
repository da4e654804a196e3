"""What every stage task shares: the cache key, the file check, the lock, the Prefect task.

A stage's artifact lives at a path whose name is the stage's cache key (its config, its input
digests, its code version). The Prefect cache key is derived from the same path plus the digest
of the artifact found there, and is None when no valid artifact exists: so Prefect's cache and
the file check always agree. A deleted or corrupt artifact is rebuilt, and, since its digest
changes, so is everything downstream of it.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from musc import store
from musc.store import artifact_lock, remove_artifact, stable_hash, valid_digest

Ref = dict[str, str]  # {"stage", "path", "digest"}: what tasks pass to each other


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("musc")


def stage_folder(ref_path: str | Path, stage: str) -> Path:
    """The folder of ``stage`` beside an upstream artifact (same dataset and category)."""
    return Path(ref_path).parents[1] / stage


def ensure_artifact(stage: str, path: Path, build: Callable[[Path], None]) -> Ref:
    """Return the artifact at ``path`` if valid, else build it (under a lock: never twice at once)."""
    digest = valid_digest(path, stage)
    if digest is not None:
        logger().info(f"{stage}: reusing {path}")
        store.clear_parts(path)  # parts a concurrent run may have left: the artifact is complete
    else:
        with artifact_lock(path):
            digest = valid_digest(path, stage)  # another run may have built it while we waited
            if digest is None:
                if path.exists():
                    logger().warning(f"{stage}: {path} is partial or corrupt; rebuilding it")
                remove_artifact(path)
                store.clear_temporary_files(path)
                logger().info(f"{stage}: computing {path}")
                build(path)
                digest = store.verify(path, stage)
    return {"stage": stage, "path": str(path), "digest": digest}


def stage_task(stage: str, plan: Callable[..., Path]) -> Callable[[Callable], Any]:
    """Decorate ``fn(**params) -> Ref`` as a cached Prefect task; ``plan(**params)`` gives its path."""

    def cache_key(_context: Any, parameters: dict[str, Any]) -> str | None:
        path = plan(**parameters)
        digest = valid_digest(path, stage)
        return None if digest is None else f"musc-{stage}-{stable_hash(str(path.resolve()), digest, length=32)}"

    def decorate(fn: Callable) -> Any:
        return task(name=stage, cache_key_fn=cache_key, persist_result=True, result_serializer="json",
                    cache_expiration=None, retries=0)(fn)

    return decorate


def fault_point(stage: str, parts_done: int) -> None:
    """Crash-test hook: with MUSC_FAULT="<stage>:<n>" the process kills itself (SIGKILL, as a
    crash or an OOM kill would) once n parts of that stage exist. Unset in normal use."""
    wanted_stage, _, wanted_parts = os.environ.get("MUSC_FAULT", "").partition(":")
    if wanted_stage == stage and wanted_parts.isdigit() and parts_done >= int(wanted_parts):
        os.kill(os.getpid(), signal.SIGKILL)


def fail_once_point(stage: str) -> None:
    """Failure-test hook: with MUSC_FAIL_ONCE="<stage>:<marker file>", the stage fails while the
    marker file exists, and removes it: the next try (a retry of the flow run) goes through."""
    wanted_stage, _, marker = os.environ.get("MUSC_FAIL_ONCE", "").partition(":")
    if wanted_stage == stage and marker and os.path.exists(marker):
        os.unlink(marker)
        raise RuntimeError(f"{stage}: injected failure (MUSC_FAIL_ONCE)")
