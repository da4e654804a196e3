"""A batch at scale: ``musc run`` of N generated images at the demo grid, watched from outside while it
runs: its wall time, the peak disk its artifacts folder takes, the largest process's peak resident
memory, its CPU seconds, and the score stage's CPU seconds per tile against the tile's arithmetic;
with ``--before COMMIT``, the same with that commit's code, side by side in one run.

    python bench/batch_scale.py --images 500 --before ac753d3
    python bench/batch_scale.py --images 2000                   # about an hour of CPU on 2 cores

Data: ``fabric`` images from ``musc.inputs.synthetic.make_dataset`` (seed 3: N good images and one
of each defect), the demo settings (seeded demo backbone at 128 px: L = 256, C = 96, layers 0-3,
r_list 1, 3, 5), block size 8. Memory and disk are sampled every 0.25 s (psutil), so a peak
shorter than that may be missed. The FLOP bound of a tile is its products, 2 (8 L)^2 (C + 2) per
layer, at the fp32 matrix rate measured here on every core (``bench/benchmark.matmul_rate``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "bench"))
from benchmark import matmul_rate  # noqa: E402 - bench/benchmark.py, beside this file
from trees import commit_tree  # noqa: E402 - bench/trees.py

PATCHES, CHANNELS, LAYERS, DEGREES, BLOCK = 256, 96, 4, 3, 8


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def watched(command: list[str], cwd: Path, env: dict, artifacts: Path) -> dict:
    """Run ``command``, sampling the artifacts folder's size and every process's resident memory."""
    import psutil
    peaks = {"disk": 0, "rss": 0}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    root = psutil.Process(process.pid)
    cpu = {}
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            for member in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    peaks["rss"] = max(peaks["rss"], member.memory_info().rss)
                    times = member.cpu_times()
                    cpu[member.pid] = times.user + times.system
        peaks["disk"] = max(peaks["disk"], folder_bytes(artifacts))
        time.sleep(0.25)
    wall = time.perf_counter() - started
    reader.join()
    if process.returncode != 0:
        raise SystemExit(f"musc run failed ({process.returncode}): {''.join(output)[-2000:]}")
    return {"wall": wall, "disk": peaks["disk"], "rss": peaks["rss"], "cpu": sum(cpu.values()),
            "after": folder_bytes(artifacts)}


def measure(tree: Path, data: Path, scratch: Path, name: str) -> dict:
    from flows.demo import DEMO_CONFIG
    artifacts = scratch / f"artifacts_{name}"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(scratch / f"prefect_{name}"),
           "PYTHONPATH": str(tree)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", str(data),
               "--category", "fabric", "--backbone", DEMO_CONFIG["backbone"], "--pretrained", DEMO_CONFIG["pretrained"],
               "--image-size", str(DEMO_CONFIG["image_size"]), "--layers", ",".join(map(str, DEMO_CONFIG["layers"])),
               "--block-size", str(BLOCK), "--device", "cpu", "--artifacts", str(artifacts)]
    result = watched(command, tree, env, artifacts)
    import shutil
    shutil.rmtree(artifacts, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="good images (one of each defect is added)")
    parser.add_argument("--before", help="a commit to measure beside this tree (a git worktree of it)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from musc.inputs.synthetic import make_dataset
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        data = make_dataset(scratch / "data", n_good=args.images, n_per_defect=1, size=128, seed=3,
                            categories=("fabric",))
        n = len(list((data / "fabric/test").rglob("*.png")))
        trees = {f"before {args.before}": stack.enter_context(commit_tree(args.before))} if args.before else {}
        results = {}
        for index, (name, tree) in enumerate({**trees, "this tree": HERE}.items()):
            results[name] = measure(tree, data, scratch, str(index))
            print(f"{name}: {json.dumps({k: round(v, 1) for k, v in results[name].items()})}", flush=True)
    blocks = -(-n // BLOCK)
    tiles = DEGREES * blocks * (blocks + 1) // 2
    bound = LAYERS * 2 * (BLOCK * PATCHES) ** 2 * (CHANNELS + 2) / (rate * 1e9)  # one full tile, every core
    msm = DEGREES * LAYERS * n * (n - 1) / 2 * 2 * 2 * PATCHES ** 2 * (CHANNELS + 2) / 2  # each pair once, both ways
    print(f"\nmusc run of {n} images (demo grid: L {PATCHES}, C {CHANNELS}, {LAYERS} layers, {DEGREES} degrees), "
          f"{tiles} tiles of {BLOCK} x {BLOCK} images; fp32 rate {rate:.1f} GFLOP/s on every core: a tile's "
          f"arithmetic {bound * 1000:.1f} ms, the run's MSM {msm / rate / 1e9:.0f} s")
    print("| code | wall s | CPU s | peak disk GB | disk after GB | largest process peak RSS GB | CPU s per tile (x its arithmetic on one core) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        per_tile = r["cpu"] / tiles
        print(f"| {name} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['disk'] / 1e9:.2f} | {r['after'] / 1e9:.2f} | "
              f"{r['rss'] / 1e9:.2f} | {per_tile:.3f} ({per_tile / (bound * os.cpu_count()):.2f}x) |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
