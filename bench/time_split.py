"""Where a batch's time goes: ``musc run`` of N generated images at the demo grid as a Prefect run, as
the plain-Python build (``musc.stages.build_all``) and with ``--dask local``, each split into the
stages' own work (compute), HDF5 I/O, file hashing, start-up and orchestration, in CPU seconds of
every process the run started; with its wall time, the largest process's peak memory and the peak
disk of its artifacts.

    python bench/time_split.py --images 100 500            # every way, N = 100 then 500
    python bench/time_split.py --images 1000 --ways prefect
    python bench/time_split.py --images 500 --ways prefect --before 60831fa   # that commit beside this tree

How: bench/time_split_hooks/sitecustomize.py is loaded by each process of the run (the folder first
on PYTHONPATH); it times each thread's CPU inside the stages' ``build`` (and the score stage's
``compute_tile``, the evaluate stage's pictures), inside h5py's file, dataset and group calls, and
inside ``file_sha256``, each call counted once (the innermost), and writes each process's totals and
whole CPU time every second and at exit. Start-up is the main process's CPU before its first stage;
orchestration the rest of the main process's (Prefect's task and flow machinery, our flow code,
Python itself); other processes: the temporary Prefect server's CPU, or Dask's scheduler and
workers' outside the tiles (their start-up included). Data:
``musc.inputs.synthetic.make_dataset`` (seed 3, N good ``fabric`` images of 128 px and one of each
defect), the demo settings (seeded demo backbone at 128 px: L = 256, C = 96, layers 0-3, r 1, 3, 5),
block size 8. Memory and disk are sampled every 0.25 s from outside (bench/batch_scale.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "bench"))
from batch_scale import BLOCK, watched  # noqa: E402 - bench/batch_scale.py, beside this file
from trees import commit_tree  # noqa: E402 - bench/trees.py

STAGES = ("extract", "aggregate", "score", "classify", "evaluate")
WAYS = ("prefect", "plain", "dask")


def command(way: str, data: Path, artifacts: Path) -> list[str]:
    from flows.demo import DEMO_CONFIG
    settings = {**DEMO_CONFIG, "block_size": BLOCK}
    if way == "plain":
        code = ("import sys, json; from musc.stages import Run, build_all; from musc.inputs.config import MuscConfig; "
                "from musc.inputs.datasets import load_category; "
                "build_all(Run(load_category('mvtec_ad', sys.argv[1], 'fabric'), MuscConfig(**json.loads(sys.argv[2])), "
                "sys.argv[3]))")
        return [sys.executable, "-c", code, str(data), json.dumps(settings), str(artifacts)]
    flags = ["--backbone", settings["backbone"], "--pretrained", settings["pretrained"], "--image-size",
             str(settings["image_size"]), "--layers", ",".join(map(str, settings["layers"])), "--block-size", str(BLOCK),
             "--device", "cpu"]
    return ([sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", str(data), "--category",
             "fabric", "--artifacts", str(artifacts), *flags] + (["--dask", "local"] if way == "dask" else []))


def measure(way: str, data: Path, scratch: Path, tree: Path = HERE) -> dict:
    name = f"{way}_{len(list(scratch.glob('split_*')))}"
    artifacts, split = scratch / f"artifacts_{name}", scratch / f"split_{name}"
    split.mkdir()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(scratch / f"prefect_{name}"),
           "PYTHONPATH": os.pathsep.join([str(HERE / "bench/time_split_hooks"), str(tree)]),
           "MUSC_TIME_SPLIT": str(split)}
    env.pop("PREFECT_API_URL", None)
    result = watched(command(way, data, artifacts), tree, env, artifacts)
    shutil.rmtree(artifacts, ignore_errors=True)
    records = [json.loads(p.read_text()) for p in split.glob("*.json")]
    pids = {r["pid"] for r in records}
    main = next(r for r in records if r["ppid"] not in pids)  # the command's process: every other is its child
    totals = {"start-up": main["before_first_stage"] or 0.0}
    for record in records:
        for category, seconds in record["totals"].items():
            totals[category] = totals.get(category, 0.0) + seconds
    cpu = sum(r["cpu"] for r in records)
    others = [r for r in records if r is not main]  # the temporary Prefect server, Dask's scheduler and workers
    totals["other processes"] = sum(r["cpu"] - sum(r["totals"].values()) for r in others)
    totals["orchestration"] = cpu - sum(totals.values())
    return {**result, "cpu": cpu, "split": totals, "processes": len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100], help="good images (one of each defect is added)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--before", help="a commit to measure beside this tree, each way (a git worktree of it)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from musc.inputs.synthetic import make_dataset
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    columns = ["start-up", *(f"stage {s}" for s in STAGES), "hdf5", "hashing", "orchestration", "other processes"]
    rows = []
    with contextlib.ExitStack() as stack:
        trees = {f"before {args.before}": stack.enter_context(commit_tree(args.before))} if args.before else {}
        trees["this tree" if args.before else ""] = HERE
        for n_good in args.images:
            with tempfile.TemporaryDirectory() as folder:
                scratch = Path(folder)
                data = make_dataset(scratch / "data", n_good=n_good, n_per_defect=1, size=128, seed=3,
                                    categories=("fabric",))
                n = len(list((data / "fabric/test").rglob("*.png")))
                for way in args.ways:
                    for code, tree in trees.items():
                        r = measure(way, data, scratch, tree)
                        label = f"{way}, {code}" if code else way
                        shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "split"}
                        print(f"N={n} {label}: {json.dumps(shown)} split "
                              f"{json.dumps({k: round(v, 1) for k, v in r['split'].items()})}", flush=True)
                        rows.append((n, label, r))
    print("\nCPU seconds of every process of the run (share of the run's CPU); wall seconds; the largest process's "
          "peak resident memory; the artifacts' peak disk")
    print("| N | way | wall s | CPU s | " + " | ".join(c.replace("stage ", "") for c in columns)
          + " | largest process GB | peak disk GB |")
    print("|---:|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|")
    for n, way, r in rows:
        cells = [f"{r['split'].get(c, 0.0):.1f} ({100 * r['split'].get(c, 0.0) / r['cpu']:.0f}%)" for c in columns]
        print(f"| {n} | {way} | {r['wall']:.0f} | {r['cpu']:.0f} | " + " | ".join(cells)
              + f" | {r['rss'] / 1e9:.2f} | {r['disk'] / 1e9:.2f} |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
