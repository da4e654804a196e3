"""The evaluate stage's metrics at scale: ``musc.outputs.evaluation.evaluate`` (image and pixel metrics,
thresholds, decisions) on N maps of 128 x 128 float32 (a run of N images at the demo grid), its
peak traced memory (tracemalloc: numpy's arrays) beyond the maps and masks, and its time; with
``--before COMMIT``, the same with that commit's code, side by side in one run.

    python bench/metrics_memory.py --images 500 2000 --before 60831fa

Data: uniform random maps (every pixel a distinct float32, the worst case for distinct scores), 1 %
of the images anomalous with a 30 x 30 defect region raised by 0.5; each measurement in a fresh
process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "bench"))
from trees import commit_tree  # noqa: E402 - bench/trees.py

MEASURE = """
import json, sys, time, tracemalloc
import numpy as np
from musc.outputs.evaluation import EvaluationInputs, evaluate
n, size = int(sys.argv[1]), 128
rng = np.random.default_rng(0)
maps = rng.random((n, size, size), dtype=np.float32)
masks = np.zeros((n, size, size), np.uint8)
labels = np.zeros(n, np.int64)
bad = max(1, n // 100)
labels[-bad:] = 1
masks[-bad:, 30:60, 40:70] = 1
maps[-bad:, 30:60, 40:70] += 0.5
raw = maps.max(axis=(1, 2)).astype(np.float64)
names = np.array([f"{i}.png" for i in range(n)])
inputs = EvaluationInputs(names, names, np.array(["good"] * n), labels, np.ones(n, bool), masks, maps, raw, raw)
import sklearn.metrics, skimage.measure  # imported before the measurement
tracemalloc.start()
started = time.perf_counter()
decided = evaluate(inputs)
seconds = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": seconds, "peak": peak, "metrics": {k: float(v) for k, v in decided.metrics.items()}}))
"""


def measure(tree: Path, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(n)], cwd=tree, env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--before", help="a commit to measure beside this tree")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with contextlib.ExitStack() as stack:
        trees = {f"before {args.before}": stack.enter_context(commit_tree(args.before))} if args.before else {}
        trees["this tree"] = HERE
        print("| N | pixels | code | peak traced MB | bytes a pixel | s | pixel AUROC | pixel AUPRO (MVTec) |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        for n in args.images:
            pixels = n * 128 * 128
            for name, tree in trees.items():
                r = measure(tree, n)
                print(f"| {n} | {pixels / 1e6:.1f} M | {name} | {r['peak'] / 1e6:.0f} | {r['peak'] / pixels:.1f} | "
                      f"{r['seconds']:.1f} | {r['metrics']['pixel_auroc']:.12f} | {r['metrics']['pixel_aupro_mvtec']:.12f} |",
                      flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
