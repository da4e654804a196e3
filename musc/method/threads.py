"""Threads for the kernels: parallel across independent pieces of work (tiles, pool blocks), each
piece's torch operations on one thread.

Two OpenMP threads inside one product wait for each other at every barrier. Where another process
holds a core (a line PC, a worker node, Dask workers side by side), the partner is descheduled and
a 2-thread product of the short-K shapes MSM uses ran at 4-25 % of the 1-thread rate
(docs/PERFORMANCE.md, "Threads on a shared machine"). Independent pieces on single-threaded
workers lose only the share of the CPU the other process takes: the scheduler shares the cores,
and no thread spins waiting for a partner.

``one_thread()`` sets the calling thread's torch thread count (OpenMP's and MKL's are per thread)
to one and gives it back; ``parallel_map`` runs pieces on ``usable_cores()`` such threads. Votes do
not depend on the thread count (a product's rows are computed whole in either case; the tests hold
parallel and serial votes bit-equal).
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STATE = threading.Lock()
_inside = threading.local()  # .depth: one_thread blocks open in this thread
_open = 0  # one_thread blocks open in the process
_process_threads = 0  # the torch thread count to give back (read while no block was open)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Within the block, torch operations of the calling thread use one thread; other threads keep
    theirs. (torch also keeps a process-wide count, read by threads that have not used torch yet:
    it is 1 only while some block is open, and given back when the last one closes.)"""
    import torch
    global _open, _process_threads
    depth = getattr(_inside, "depth", 0)
    if depth:
        _inside.depth = depth + 1
        try:
            yield
        finally:
            _inside.depth = depth
        return
    with _STATE:
        if _open == 0:
            _process_threads = torch.get_num_threads()
        _open += 1
        restore = _process_threads
    torch.set_num_threads(1)
    _inside.depth = 1
    try:
        yield
    finally:
        _inside.depth = 0
        with _STATE:
            _open -= 1
        torch.set_num_threads(restore)


PIECES_MEMORY = 512 << 20  # bytes the pieces running at once may hold together (their products)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, each_bytes: int = 0
                 ) -> list[R]:
    """``[fn(item) for item in items]``, computed on up to ``workers`` threads (default: the usable
    cores), each in ``one_thread()``; results in the order of ``items``. ``each_bytes``: what a
    piece holds while it runs: no more pieces run at once than ``PIECES_MEMORY`` allows, and when
    that is one, they run one after the other on torch's own threads (a product that large has
    few barriers for its work). The first error is raised once the pieces already running have
    ended; pieces not started are dropped. Called from inside a piece, it runs serially (no nested
    pools)."""
    items = list(items)
    workers = min(workers or usable_cores(), len(items), max(1, PIECES_MEMORY // max(1, each_bytes)))
    if getattr(_inside, "depth", 0):
        return [fn(item) for item in items]
    if workers <= 1:
        if each_bytes * 2 > PIECES_MEMORY:  # large pieces: each one's products on torch's threads
            return [fn(item) for item in items]
        with one_thread():
            return [fn(item) for item in items]

    def piece(item: T) -> R:
        with one_thread():
            return fn(item)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musc-kernel") as pool:
        futures = [pool.submit(piece, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


__all__ = ["one_thread", "parallel_map", "usable_cores"]
