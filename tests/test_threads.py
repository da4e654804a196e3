"""Kernels parallel across pieces, each piece on one thread (musc.method.threads): the votes are the
same bits as computed serially, thread counts are given back, errors and order kept; the pieces
really run at once (a wall-clock check that cannot pass when they run one after the other)."""
import threading
import time

import pytest
import torch

from musc.inputs.config import ScoreSettings
from musc.method.msm import image_blocks, tile_minima
from musc.method.threads import one_thread, parallel_map, usable_cores
from musc.reference_pool.scoring import in_memory, mutual_votes, pool_votes


def test_pool_votes_in_parallel_are_the_serial_votes_bit_for_bit():
    generator = torch.Generator().manual_seed(5)
    pool, parts = torch.randn(37, 49, 12, generator=generator), torch.randn(3, 49, 12, generator=generator)
    settings = ScoreSettings(block_size=4)
    parallel = pool_votes(in_memory(parts), 3, in_memory(pool), 37, settings)
    serial = torch.cat([tile_minima(parts, pool[a:b])[0] for a, b in image_blocks(37, 4)], dim=1)
    assert parallel.shape == (3, 37, 49) and torch.equal(parallel, serial)
    own = mutual_votes(in_memory(pool), 37, in_memory(pool), 0, settings)
    assert torch.isinf(own[torch.arange(37), torch.arange(37)]).all()  # an image's vote against itself
    off = ~torch.eye(37, dtype=torch.bool)
    full = tile_minima(pool, pool)[0]
    assert torch.allclose(own[off], full[off], rtol=1e-5, atol=1e-5)


def test_one_thread_gives_the_thread_counts_back():
    before = torch.get_num_threads()
    seen = []

    def inside():
        with one_thread():
            seen.append(torch.get_num_threads())
            with one_thread():  # nested: still one
                seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())
    worker = threading.Thread(target=inside)
    worker.start()
    worker.join()
    with one_thread():
        seen.append(torch.get_num_threads())
    assert seen[:2] == [1, 1] and seen[2] == before and seen[3] == 1
    assert torch.get_num_threads() == before


def test_parallel_map_keeps_the_order_and_raises_the_first_error():
    assert parallel_map(lambda x: x * x, range(20), workers=3) == [x * x for x in range(20)]

    def fails(x):
        if x == 7:
            raise ValueError("piece 7")
        return x
    with pytest.raises(ValueError, match="piece 7"):
        parallel_map(fails, range(20), workers=2)
    assert parallel_map(lambda x: parallel_map(lambda y: y + x, range(3)), range(2)) == [[0, 1, 2], [1, 2, 3]]


@pytest.mark.skipif(usable_cores() < 2, reason="one core")
def test_pieces_run_at_once():
    """Two pieces that each hold for 0.3 s end in well under 0.6 s (sleep releases the GIL, as
    torch's operations do)."""
    start = time.perf_counter()
    parallel_map(lambda _: time.sleep(0.3), range(2), workers=2)
    assert time.perf_counter() - start < 0.55


def test_tile_tasks_are_submitted_as_they_can_run():
    """At most ``at_most`` submitted and not done at any time, every one done once. (Futures of a
    thread pool here: ``in_flight`` uses only ``add_done_callback``, which Prefect's futures have;
    the flows' tests run it with Prefect's.)"""
    from concurrent.futures import ThreadPoolExecutor

    from flows.runners import in_flight
    lock, state = threading.Lock(), {"open": 0, "most": 0}

    def work(item):
        time.sleep(0.002)
        return item * 2

    def closed(_):
        with lock:
            state["open"] -= 1

    with ThreadPoolExecutor(4) as pool:
        def submit(item):
            with lock:
                state["open"] += 1
                state["most"] = max(state["most"], state["open"])
            future = pool.submit(work, item)
            future.add_done_callback(closed)
            return future
        done = sorted(future.result() for future in in_flight(submit, range(40), at_most=5))
    assert done == [2 * i for i in range(40)]
    assert 2 <= state["most"] <= 5  # never more than at_most in flight


def test_pieces_too_large_to_hold_together_run_one_after_the_other(monkeypatch):
    from musc.method import threads
    monkeypatch.setattr(threads, "PIECES_MEMORY", 1000)
    names = parallel_map(lambda _: threading.current_thread().name, range(4), each_bytes=600)
    assert names == [threading.current_thread().name] * 4  # in the calling thread
    names = parallel_map(lambda _: threading.current_thread().name, range(4), each_bytes=300)
    assert all(name.startswith("musc-kernel") for name in names) or usable_cores() < 2
