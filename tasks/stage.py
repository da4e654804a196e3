"""Prefect's face of the stages (musc.stages): one task runs a stage's plan, one task runs a chunk
of a per-part stage's plans (the line's parts), one task computes a batch of tiles of a tiled stage. A reused artifact ends its task in the state Prefect calls Cached, so the UI
shows what was reused; Prefect's own result cache is off (task results are small references,
never pickles): the artifact on disk is the one truth (musc/stages/building.py)."""
from __future__ import annotations

import logging

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.states import Completed

from musc import store
from musc.method.blocks import Tile
from musc.stages import STAGE_SPECS, Plan, ensure, ensure_many

from .ui import made_by


class _ToRunLogger(logging.Handler):
    """musc's log records on the log of the task run of their thread (the Prefect UI shows them);
    outside a run they go on to the root logger's handlers, as if propagated."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            target = get_run_logger()
        except MissingContextError:
            logging.getLogger().handle(record)
            return
        target.log(record.levelno, record.getMessage())


_LIBRARY = logging.getLogger("musc")
if not any(isinstance(h, _ToRunLogger) for h in _LIBRARY.handlers):
    _LIBRARY.addHandler(_ToRunLogger())
    _LIBRARY.propagate = False
    if _LIBRARY.level == logging.NOTSET:
        _LIBRARY.setLevel(logging.INFO)


def _stage_run_name() -> str:
    from prefect.runtime import task_run
    return task_run.parameters["plan"].label


@task(name="stage", task_run_name=_stage_run_name, cache_policy=NO_CACHE, persist_result=False)
def stage_task(plan: Plan):
    """The plan's artifact: reused (Cached) when valid, else built."""
    with store.made_by(made_by()):
        ref, reused = ensure(plan)
    return Completed(data=ref, name="Cached", message=f"reused {plan.path}") if reused else ref


def _tile_run_name() -> str:
    from prefect.runtime import task_run
    tiles = task_run.parameters["tiles"]
    first, last = tiles[0], tiles[-1]
    return (f"{task_run.parameters['plan'].label} {len(tiles)} tile(s) {first.subset}:{first.first}-{first.second}"
            + (f" to {last.subset}:{last.first}-{last.second}" if len(tiles) > 1 else ""))


@task(name="tile", task_run_name=_tile_run_name, retries=1, cache_policy=NO_CACHE, persist_result=False)
def tile_task(plan: Plan, tiles: list[Tile]) -> int:
    """Tiles of a tiled stage, one after the other, each written as a part of the plan's artifact (a
    killed task loses at most the tile it was computing). Returns how many were computed (not
    already there)."""
    compute = STAGE_SPECS[plan.stage].module.compute_tile
    return sum(bool(compute(plan, tile)) for tile in tiles)


def _parts_run_name() -> str:
    from prefect.runtime import task_run
    plans = task_run.parameters["plans"]
    return f"{plans[0].stage} of {len(plans)} part(s)"


@task(name="parts", task_run_name=_parts_run_name, cache_policy=NO_CACHE, persist_result=False)
def parts_task(plans: list[Plan]):
    """A chunk of a per-part stage's plans (one artifact per part, the missing ones built together:
    ``ensure_many``): Cached when every one was reused. Returns their references (a part that could
    not be built: a ``not_built`` reference saying why)."""
    with store.made_by(made_by()):
        results = ensure_many(plans)
    refs = [ref for ref, _ in results]
    if all(reused for _, reused in results):
        return Completed(data=refs, name="Cached", message=f"reused {len(refs)} artifact(s)")
    return refs
