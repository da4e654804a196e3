"""Where tasks run: local threads by default, a Dask cluster when asked (prefect-dask)."""
from __future__ import annotations

import itertools
import queue
from typing import Callable, Iterable, Iterator, TypeVar

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

LOCAL_THREADS = 2
IN_FLIGHT = 64  # tile tasks submitted and not yet done, at most: enough to keep a Dask cluster's workers busy
TASK_WORK = 30e9  # FLOP a tile task gathers at least (about 0.3 s here): Prefect's per-task cost (30-40 ms
# on this 2-core machine) stays small beside the work; a tile that size or larger is a task alone
T = TypeVar("T")


def task_runner(dask: str | None = None):
    """``None``: local threads. ``"local"``: a Dask LocalCluster started for the run.
    ``"tcp://host:8786"``: an existing Dask scheduler (artifacts must be on a path all workers share)."""
    if not dask:
        return ThreadPoolTaskRunner(max_workers=LOCAL_THREADS)
    from prefect_dask import DaskTaskRunner
    if dask == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1})
    return DaskTaskRunner(address=dask)


def in_flight(submit: Callable[[T], PrefectFuture], items: Iterable[T], at_most: int = IN_FLIGHT
              ) -> Iterator[PrefectFuture]:
    """Each of ``items`` submitted (``submit(item)``), its future yielded once done, with at most
    ``at_most`` submitted and not yet done: the flow's memory and the task runner's queue stay flat
    however many items there are (94,125 tiles submitted at once held 2.3 GB)."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    waiting, running = iter(items), 0
    for item in itertools.islice(waiting, at_most):
        submit(item).add_done_callback(finished.put)
        running += 1
    while running:
        done = finished.get()
        running -= 1
        for item in itertools.islice(waiting, 1):  # the next one, before the flow looks at this one
            submit(item).add_done_callback(finished.put)
            running += 1
        yield done


def batches(items: Iterable[T], work: Callable[[T], float], group: Callable[[T], object],
            at_least: float = TASK_WORK) -> Iterator[list[T]]:
    """Consecutive ``items`` of one ``group`` gathered until their ``work`` reaches ``at_least``."""
    batch, gathered, key = [], 0.0, None
    for item in items:
        if batch and (group(item) != key or gathered >= at_least):
            yield batch
            batch, gathered = [], 0.0
        batch.append(item)
        gathered += work(item)
        key = group(item)
    if batch:
        yield batch
