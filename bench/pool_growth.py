"""A pool filled at the cost of its own work: ``musc run`` of N images, ``musc pool add`` of that run,
then a day of new parts scored against the pool and added to it (``musc pool add DAY``), each a
command as a user runs it, timed wall to wall; with ``--before COMMIT`` the same on that commit's
code, side by side in one run, and the two pools' calibrations compared.

    python bench/pool_growth.py                      # 300 images, a day of 10 parts
    python bench/pool_growth.py --before ac753d3     # and the code before votes were kept
    python bench/pool_growth.py --images 100 --parts 5

Data: generated ``fabric`` images (``musc.inputs.synthetic.make_dataset``, seed 3; the parts seed 4),
the demo settings (seeded demo backbone at 128 px, layers 0-3, the default r_list 1, 3, 5). The pool keeps up to
1,000 images (``--max-images``), so nothing is dropped. The day's parts are scored with a fixed
threshold above every score, so all are decided normal and join with ``--include-normal``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "bench"))
from trees import commit_tree  # noqa: E402 - bench/trees.py


def command(tree: Path, base: Path, *args: str) -> float:
    """Seconds one ``musc`` command takes, run from ``tree`` (its code) in a fresh process."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(base / "prefect"),
           "PYTHONPATH": str(tree)}
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"musc {' '.join(args[:2])} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    return seconds


def measure(tree: Path, data: Path, parts: list[Path], max_images: int, keep: Path) -> dict:
    from flows.demo import DEMO_CONFIG
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        artifacts, pool, day = base / "artifacts", base / "pool.h5", base / "day"
        run = command(tree, base, "run", "--dataset", "mvtec_ad", "--root", str(data), "--category", "fabric",
                      "--backbone", DEMO_CONFIG["backbone"], "--pretrained", DEMO_CONFIG["pretrained"],
                      "--image-size", str(DEMO_CONFIG["image_size"]),
                      "--layers", ",".join(map(str, DEMO_CONFIG["layers"])),
                      "--device", "cpu",
                      "--artifacts", str(artifacts))
        add_run = command(tree, base, "pool", "add", "--pool", str(pool), str(artifacts / "mvtec_ad/fabric"),
                          "--max-images", str(max_images))
        import h5py
        with h5py.File(pool) as f:
            size, calibration = len(f["names"]), f["self_scores"][()]
        command(tree, base, "score-new", "--pool", str(pool), "--threshold", "1e9", "--device", "cpu",
                "--out", str(day), *map(str, parts))
        add_day = command(tree, base, "pool", "add", "--pool", str(pool), str(day), "--include-normal")
        with h5py.File(pool) as f:
            grown, grown_calibration = len(f["names"]), f["self_scores"][()]
        disk = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    import numpy as np
    np.save(keep, np.concatenate([calibration, grown_calibration]))
    return {"run": run, "add_run": add_run, "add_day": add_day, "size": size, "grown": grown, "disk": disk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="good images of the run")
    parser.add_argument("--parts", type=int, default=10, help="parts of the day added afterwards")
    parser.add_argument("--max-images", type=int, default=1000)
    parser.add_argument("--before", help="a commit to measure beside this tree (a git worktree of it)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from musc.inputs.synthetic import make_dataset
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        data = make_dataset(scratch / "data", n_good=args.images, n_per_defect=1, size=128, seed=3,
                            categories=("fabric",))
        more = make_dataset(scratch / "more", n_good=args.parts, n_per_defect=1, size=128, seed=4,
                            categories=("fabric",))
        parts = sorted((more / "fabric/test/good").glob("*.png"))[:args.parts]
        trees = {f"before {args.before}": stack.enter_context(commit_tree(args.before))} if args.before else {}
        results = {}
        for name, tree in {**trees, "this tree": HERE}.items():
            results[name] = measure(tree, data, parts, args.max_images, scratch / f"{len(results)}.npy")
            print(f"{name}: {json.dumps({k: round(v, 2) for k, v in results[name].items()})}", flush=True)
        calibrations = [__import__("numpy").load(scratch / f"{i}.npy") for i in range(len(results))]
        images = len(list((data / "fabric/test").rglob("*.png")))
    print(f"\nrun of {images} images; pool of the run's good images, then {args.parts} parts of a day added")
    print("| code | musc run s | pool add RUN s (/ run) | pool add DAY s (/ run) | pool | disk after (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['run']:.1f} | {r['add_run']:.1f} ({r['add_run'] / r['run']:.3f}) | "
              f"{r['add_day']:.1f} ({r['add_day'] / r['run']:.3f}) | {r['size']} -> {r['grown']} | "
              f"{r['disk'] / 1e9:.2f} |")
    if len(calibrations) == 2:
        import numpy as np
        difference = np.abs(calibrations[0] - calibrations[1]).max() if calibrations[0].shape == calibrations[1].shape \
            else float("nan")
        print(f"calibrations (both pools' self scores, before and after the day): max abs difference {difference:.3g}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
