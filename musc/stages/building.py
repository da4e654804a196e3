"""One cache mechanism, with the artifact on disk as the truth: a stage's plan names its artifact
(the path is the key), and the artifact is built only when no valid one is there, under a lock, so
two runs never build it twice. Used alike by Prefect's tasks, the benchmarks and plain Python.

A stage of many small subjects (the line's parts) builds its missing artifacts together
(``ensure_many``: the stage's ``build_many``, e.g. a pool read once for a chunk of parts), each
still an artifact of its own; a subject that cannot be built (an unreadable part) is reported as
not built (``NotBuilt``), never as a failed stage."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import store
from .faults import fail_once_point, fault_point, note_work
from .key import Ref, StageKey

log = logging.getLogger("musc.stages")


class NotBuilt(Exception):
    """A stage cannot make its artifact for one subject (a part that cannot be read, or not of a
    tiled pool's size); the message says why, naming the file. Its other subjects go on."""


@dataclass(frozen=True)
class Plan:
    """What one stage will do: its key and artifact path, what its build needs (``needs``: the
    stage's own frozen dataclass of upstream references and settings; plain data, it travels to Dask
    workers), a label for people ("score r=3"), and the stage's build (``builder(path, plan)``;
    ``builder_many(items)`` for a stage of many subjects built together). ``subject``: for a stage
    with one artifact per part, the part's identity (its image's SHA-256), carried into the
    artifact's reference."""
    key: StageKey
    path: str
    label: str
    needs: Any
    builder: Callable[[Path, "Plan"], None]
    builder_many: Callable[[list[tuple[Path, "Plan"]]], dict[str, str]] | None = None
    subject: str | None = None

    @property
    def stage(self) -> str:
        return self.key.stage

    def build(self, path: Path) -> None:
        self.builder(path, self)

    def ref(self, digest: str) -> Ref:
        """The reference of this plan's artifact of ``digest``."""
        return {"stage": self.stage, "path": str(self.path), "digest": digest,
                **({"part": self.subject} if self.subject is not None else {})}

    def not_built(self, why: str) -> Ref:
        """What stands for the artifact of a subject that could not be built: its stage, part and why."""
        return {"stage": self.stage, "part": str(self.subject), "not_built": why}


def built(ref: Ref) -> bool:
    """Whether a reference names an artifact (not a subject that could not be built)."""
    return "not_built" not in ref


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


def _reuse(plan: Plan) -> Ref | None:
    ref = valid_ref(plan.stage, plan.path)
    if ref is None:
        return None
    log.log(_level(plan), f"{plan.label}: reusing {plan.path}")
    store.clear_parts(plan.path)  # parts a concurrent run may have left: the artifact is complete
    return plan.ref(ref["digest"])


def _prepare(plan: Plan) -> None:
    """Under the plan's lock, before building: what a killed writer left there goes."""
    path = Path(plan.path)
    if path.exists():
        log.warning(f"{plan.label}: {path} is partial, corrupt or foreign; rebuilding it")
    store.remove_artifact(path)
    store.clear_temporary_files(path)
    log.log(_level(plan), f"{plan.label}: computing {path}")


def _level(plan: Plan) -> int:
    """A stage's own artifact is said at INFO; a part's (one of many) at DEBUG: ``ensure_many``
    says what a chunk did in one line."""
    return logging.DEBUG if plan.subject is not None else logging.INFO


def _built(plan: Plan) -> Ref:
    """The reference of the artifact a build just wrote (its digest: remembered by the writer)."""
    ref = plan.ref(store.verify(plan.path, plan.stage))
    note_work(f"build {plan.stage}")
    return ref


def ensure(plan: Plan, build: Callable[[Path], None] | None = None) -> tuple[Ref, bool]:
    """(reference, reused): the plan's artifact if valid, else built there under a lock."""
    fail_once_point(plan.stage)
    ref = _reuse(plan)
    if ref is not None:
        return ref, True
    path = Path(plan.path)
    with store.artifact_lock(path):
        ref = valid_ref(plan.stage, path)  # another run may have built it while we waited
        if ref is not None:
            return plan.ref(ref["digest"]), True
        _prepare(plan)
        (build or plan.build)(path)
        give_back_memory()
        return _built(plan), False


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):  # another C library: nothing to do
        return None


def give_back_memory() -> None:
    """Hand the memory a finished build freed back to the system. glibc keeps freed heap in its
    arenas, one per thread that allocated, so a run whose stages ran on different task threads
    would hold each thread's largest build at once (a few hundred MB at N = 500)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def ensure_many(plans: Sequence[Plan], build_many: Callable[[list[tuple[Path, Plan]]], dict[str, str]] | None = None
                ) -> list[tuple[Ref, bool]]:
    """(reference, reused) of each plan (plans of one stage, each a subject of its own): the valid
    artifacts reused, the missing ones built together by ``build_many`` (default: the stage's own,
    else its ``build`` one plan at a time) under their locks, taken in path order. ``build_many``
    returns, for each plan it could not build, its path -> why; such a plan's reference is a
    ``Plan.not_built`` one."""
    if not plans:
        return []
    fail_once_point(plans[0].stage)
    unique = list({plan.path: plan for plan in plans}.values())
    results: dict[str, tuple[Ref, bool]] = {}
    for plan in unique:
        ref = _reuse(plan)
        if ref is not None:
            results[plan.path] = (ref, True)
    missing = [plan for plan in unique if plan.path not in results]
    if missing:
        with contextlib.ExitStack() as held:
            for plan in sorted(missing, key=lambda p: p.path):
                held.enter_context(store.artifact_lock(plan.path))
            todo = []
            for plan in missing:
                ref = valid_ref(plan.stage, plan.path)  # built by another run while we waited
                if ref is not None:
                    results[plan.path] = (plan.ref(ref["digest"]), True)
                else:
                    _prepare(plan)
                    todo.append(plan)
            if todo:
                failed = (build_many or stage_build_many(todo[0]))([(Path(p.path), p) for p in todo])
                for plan in todo:
                    why = failed.get(plan.path)
                    results[plan.path] = ((plan.not_built(why), False) if why is not None
                                          else (plan.ref(store.verify(plan.path, plan.stage)), False))
    reused = sum(was_reused for _, was_reused in results.values())
    failed = sum(not built(ref) for ref, _ in results.values())
    log.info(f"{plans[0].stage}: {len(unique)} part(s): {reused} reused, {len(unique) - reused - failed} built"
             + (f", {failed} not built" if failed else ""))
    return [results[plan.path] for plan in plans]


_FINISHED: dict[str, int] = {}  # per-subject builds this process finished, by stage (what a crash test counts)


def stage_build_many(plan: Plan) -> Callable[[list[tuple[Path, Plan]]], dict[str, str]]:
    """A stage's ``builder_many`` where it has one, else its ``builder`` one plan at a time; either way
    a ``NotBuilt`` of one plan is that plan's reason, and the others are built. Each build finished
    is noted (``note_work``) as it finishes."""
    if plan.builder_many is not None:
        return plan.builder_many

    def one_at_a_time(items: list[tuple[Path, Plan]]) -> dict[str, str]:
        failed = {}
        for path, one in items:
            try:
                one.build(path)
            except NotBuilt as why:
                failed[str(path)] = str(why)
            else:
                note_work(f"build {one.stage}")
                _FINISHED[one.stage] = _FINISHED.get(one.stage, 0) + 1
                fault_point(one.stage, _FINISHED[one.stage])
        return failed
    return one_at_a_time
