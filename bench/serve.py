"""The warm scorer (``musc serve``) against a pool: each part dropped into the watched folder one at
a time, its latency from the drop to its row (the first part: with the backbone loaded and the pool
verified; then steady state), beside a one-part ``musc score-new`` command (a fresh process) and the
FLOP bound measured on this machine.

    python bench/serve.py                       # a 300-image pool, 20 parts
    python bench/serve.py --pool-size 100 --parts 10

Setting as bench/calls.py: the seeded demo backbone at 128 px (L = 256), layers 0-3, r_list (1, 3, 5),
a fixed threshold. The service looks every 0.05 s; a part is taken on the look after the one that
first saw it (so a part's latency includes up to two looks, 0.1 s). The FLOP bound is the votes'
products, 2 L (C + 2) L per pool image, layer and degree, at the fp32 matrix rate measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))
from benchmark import matmul_rate  # noqa: E402 - bench/benchmark.py
from calls import LAYERS, R_LIST, score_new  # noqa: E402 - bench/calls.py: the same setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--parts", type=int, default=20)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        made = subprocess.run([sys.executable, str(HERE / "bench/calls.py"), "--make", str(HERE), "--base", str(base),
                               "--pool-size", str(args.pool_size), "--parts", str(args.parts)],
                              capture_output=True, text=True, check=True)
        shape = json.loads(made.stdout.strip().splitlines()[-1])
        parts = sorted((base / "incoming").glob("*.png"))
        pool = base / "pool.h5"
        command = score_new(HERE, base, pool, parts[:1], "one")  # a one-part command, for comparison

        from musc.reference_pool import DecisionRule
        from musc.reference_pool.serving import serve
        watch = base / "watch"
        watch.mkdir()
        scored: queue.Queue = queue.Queue()
        stop = threading.Event()

        def looks():  # the service in a thread, stopped by the main thread between looks
            class Stop(Exception):
                pass

            def done(look):
                scored.put((time.perf_counter(), look))
                if stop.is_set():
                    raise Stop
            try:
                serve(pool, watch, base / "served", DecisionRule(threshold=0.5), "cpu", interval=0.05, on_scored=done)
            except Stop:
                pass
        threading.Thread(target=looks, daemon=True).start()
        latencies, computing = [], []
        for index, part in enumerate(parts[1:1 + args.parts]):
            dropped = time.perf_counter()
            shutil.copy(part, watch / part.name)
            at, look = scored.get(timeout=600)
            latencies.append(at - dropped)
            computing.append(look.seconds)
            if index == args.parts - 1:
                stop.set()
    pair = 2 * shape["patches"] * (shape["channels"] + 2) * shape["patches"] * len(LAYERS) * len(R_LIST)
    bound = args.pool_size * pair / (rate * 1e9)
    steady = statistics.median(latencies[1:])
    work = statistics.median(computing[1:])
    print(f"fp32 rate {rate:.1f} GFLOP/s; FLOP bound per part against {args.pool_size} pool images "
          f"(L {shape['patches']}, C {shape['channels']}, {len(LAYERS)} layers, {len(R_LIST)} degrees): {bound:.3f} s")
    print("| | s | x bound |")
    print("|---|---:|---:|")
    print(f"| a one-part `musc score-new` command | {command:.2f} | {command / bound:.1f}x |")
    print(f"| served: first part, drop to row | {latencies[0]:.2f} | {latencies[0] / bound:.1f}x |")
    print(f"| served: steady state, drop to row (median of {len(latencies) - 1}) | {steady:.3f} | {steady / bound:.2f}x |")
    print(f"| served: steady state, scoring only (median) | {work:.3f} | {work / bound:.2f}x |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
