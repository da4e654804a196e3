"""Threads on a shared machine: pool scoring and the score stage's tiles, alone and beside a
competing CPU-bound process, before and after single-threaded pieces (``musc.method.threads``).

    python bench/threads.py                  # a part against a 300-image pool, 64 images' tiles
    python bench/threads.py --pool 100 --images 32 --repeats 2   # smaller

Cases, each timed in a fresh process (its torch threads its own), all in this one run:

* before: the code before this change. Pool scoring: pool blocks one after the other, each product
  on torch's default threads (one per core: OpenMP). Tiles, as Prefect ran them: two task threads,
  each product on torch's default threads (the flow); one after the other (the plain build).
* after: ``part_scores`` and ``parallel_map`` over tiles as the stages now run them: a piece per
  core, each on one thread.

Each case runs alone, then beside a process that spins on one core (``while True: pass``). On a
machine of C cores that process takes 1/C of the CPU: the most a case should lose is that share
(a slowdown of C / (C - 1), 2x on 2 cores); the OpenMP partners of the "before" cases lose far
more. The FLOP bound is the votes' products (2 L (C + 2) L per image pair, layer and degree) at
the fp32 matrix rate measured here on every core.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmark import best_of, matmul_rate  # noqa: E402 - bench/benchmark.py, beside this file

PATCHES, CHANNELS, LAYERS, DEGREES = 256, 96, 4, 3  # the demo backbone at 128 px, r_list (1, 3, 5)


def _features(n: int, seed: int):
    import torch
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(LAYERS, n, PATCHES, CHANNELS, generator=generator)


def case(name: str, pool_size: int, images: int, repeats: int) -> float:
    """Seconds for one case (in this process): per part for pool scoring, per tile set for tiles."""
    import torch

    from musc.inputs.config import ScoreSettings
    from musc.method.blocks import set_tiles
    from musc.method.msm import image_blocks, tile_minima
    from musc.method.threads import parallel_map
    from musc.reference_pool.scoring import in_memory, part_scores, pool_patch_scores
    settings = ScoreSettings()
    if name.startswith("pool"):
        pool, part = _features(pool_size, 0), _features(1, 1)

        def before():
            for _ in range(DEGREES):
                for layer in range(LAYERS):
                    votes = torch.cat([tile_minima(part[layer], pool[layer, a:b])[0]
                                       for a, b in image_blocks(pool_size, settings.block_size)], dim=1)
                    pool_patch_scores(votes, settings)

        def after():
            for _ in range(DEGREES):
                for layer in range(LAYERS):
                    part_scores(part[layer], in_memory(pool[layer]), pool_size, settings)
        return best_of(before if name.endswith("before") else after, repeats)
    tokens = _features(images, 2)
    tiles = set_tiles([range(images)], settings.block_size)

    def tile(t):
        return [tile_minima(tokens[layer, t.images_a], tokens[layer, t.images_b], same_block=t.same_block)
                for layer in range(LAYERS)]
    if name == "tiles before, flow":
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as threads:  # Prefect's two task threads, products on default threads
            return best_of(lambda: list(threads.map(tile, tiles)), repeats)
    if name == "tiles before, build":
        return best_of(lambda: [tile(t) for t in tiles], repeats)
    return best_of(lambda: parallel_map(tile, tiles), repeats)


CASES = ("pool before", "pool after", "tiles before, flow", "tiles before, build", "tiles after")


def in_fresh_process(name: str, args, competing: bool) -> float:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing else None
    try:
        if hog:
            time.sleep(0.3)
        out = subprocess.run([sys.executable, __file__, "--one", name, "--pool", str(args.pool), "--images",
                              str(args.images), "--repeats", str(args.repeats)], capture_output=True, text=True,
                             check=True).stdout
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"seconds": case(args.one, args.pool, args.images, args.repeats)}))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores {cores}, load average at start {os.getloadavg()[0]:.2f}; pool {args.pool} images, "
          f"tiles of {args.images} images; L {PATCHES}, C {CHANNELS}, {LAYERS} layers, {DEGREES} degrees")
    rate = matmul_rate()  # torch's default threads, alone
    pair = 2 * PATCHES * (CHANNELS + 2) * PATCHES * LAYERS * DEGREES
    bounds = {"pool": args.pool * pair / (rate * 1e9),
              "tiles": args.images * (args.images - 1) / 2 * pair / DEGREES / (rate * 1e9)}
    print(f"fp32 matrix rate {rate:.1f} GFLOP/s; FLOP bound: a part {bounds['pool']:.3f} s, "
          f"the tiles {bounds['tiles']:.3f} s")
    print(f"{'case':22s} {'alone s':>9s} {'beside s':>9s} {'slowdown':>9s} {'alone/bound':>12s}")
    for name in CASES:
        alone = in_fresh_process(name, args, False)
        beside = in_fresh_process(name, args, True)
        bound = bounds["pool" if name.startswith("pool") else "tiles"]
        print(f"{name:22s} {alone:9.3f} {beside:9.3f} {beside / alone:8.2f}x {alone / bound:11.2f}x")
    print(f"beside one spinning process the most a case should lose is its share: {cores / max(1, cores - 1):.2f}x; "
          f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
