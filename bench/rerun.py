"""A cached rerun of one demo category through ``musc run`` against an empty Prefect flow, measured
in one run on this machine, plus where the rerun's time goes.

    python bench/rerun.py [--repeats 3]

Each command runs as its own process with a fresh PREFECT_HOME (so each starts Prefect's temporary
server, as a user's first command of the day does) unless PREFECT_API_URL names a running server,
which both then use. The artifacts are built once first (not timed). The breakdown runs the same
steps as ``musc run`` in one process, on the command's own temporary server as ``musc run`` starts
it: Prefect's import, our imports, Prefect start (the server and a first empty flow), a second empty
flow (what one flow run costs), stage checks (the preflight and the category flow, every stage
reused), report (the dataset flow's table, chart, report.md and the artifacts it publishes).

The empty flow of the comparison is Prefect's own: its temporary server and its flow-run heartbeat
thread, whose end a flow run waits for (up to 1 s). ``musc``'s temporary server turns heartbeats
off (flows/server.py); with PREFECT_API_URL set both keep them. On a busy machine the two whole-process times are noisy (the temporary
server's start varies by seconds); the sum of the rerun's own parts is the steadier number.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMPTY_FLOW = """
from prefect import flow

@flow
def empty():
    return 1

empty()
"""
BREAKDOWN = """
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from flows import terminal
terminal.prefect_environment()
from prefect import flow
prefect_imported = time.perf_counter()
from flows import category as category_module, dataset as dataset_module
from flows.server import temporary_server
from musc.inputs.config import MuscConfig
from musc.stages import Run, preflight
imported = time.perf_counter()

@flow
def empty():
    return 1

with temporary_server():  # as musc run: the server of this command (or PREFECT_API_URL's)
    empty()
    prefect_started = time.perf_counter()
    empty()
    empty_flow = time.perf_counter() - prefect_started
    root, artifacts, config = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    cfg = MuscConfig.from_dict(config)
    began = time.perf_counter()
    categories = [category_module.checked_category("mvtec_ad", root, "fabric", cfg, str(artifacts))]
    preflight(cfg, [Run(c, cfg, str(artifacts.resolve())) for c in categories])
    preflight = time.perf_counter()
    spent = []
    original = dataset_module.category_flow

    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - begin)

    dataset_module.category_flow = timed
    dataset_module.dataset_flow("mvtec_ad", root, categories, cfg, str(artifacts))
    done = time.perf_counter()
print(json.dumps({"prefect_import": prefect_imported - start, "our_imports": imported - prefect_imported,
                  "prefect_start": prefect_started - imported, "another_empty_flow": empty_flow,
                  "preflight": preflight - began, "category_flow": sum(spent),
                  "report": done - preflight - sum(spent)}))
"""


def demo_settings() -> dict:
    from flows.demo import DEMO_CONFIG
    return dict(DEMO_CONFIG)


def cli_args(data: Path, artifacts: Path, config: dict) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", str(data),
            "--category", "fabric", "--backbone", config["backbone"], "--pretrained", config["pretrained"],
            "--image-size", str(config["image_size"]), "--layers", ",".join(map(str, config["layers"])),
            "--device", config["device"], "--artifacts", str(artifacts)]


def timed_run(command: list[str], scratch: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # flows sets the
    # start-up timeout (flows.PREFECT_STARTUP_SECONDS)
    if not os.environ.get("PREFECT_API_URL"):
        env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-", dir=scratch)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    timed_run.last_stdout = done.stdout
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from musc.inputs.synthetic import make_dataset
    config = demo_settings()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data, artifacts = make_dataset(scratch / "data", seed=0, categories=("fabric",)), scratch / "artifacts"
        rerun = cli_args(data, artifacts, config)
        timed_run(rerun, scratch)  # builds the artifacts
        empty_times, rerun_times = [], []
        for _ in range(args.repeats):  # interleaved, so that the machine's load hits both alike
            empty_times.append(timed_run([sys.executable, "-c", EMPTY_FLOW], scratch))
            rerun_times.append(timed_run(rerun, scratch))
        timed_run([sys.executable, "-c", BREAKDOWN, str(data), str(artifacts), json.dumps(config)], scratch)
        parts = json.loads(timed_run.last_stdout.strip().splitlines()[-1])
    empty, cached = min(empty_times), min(rerun_times)
    where = os.environ.get("PREFECT_API_URL") or "a temporary server per process"
    print(f"Prefect: {where}")
    print(f"empty Prefect flow:            best {empty:.2f} s, median {statistics.median(empty_times):.2f} s "
          f"({args.repeats} runs)")
    print(f"cached rerun (musc run, one demo category): best {cached:.2f} s, median "
          f"{statistics.median(rerun_times):.2f} s")
    verdict = "within" if cached - empty <= 1.5 else "over"
    print(f"cached rerun - empty flow: {cached - empty:+.2f} s ({verdict} the 1.5 s target); "
          f"ratio {cached / empty:.2f}; medians {statistics.median(rerun_times) - statistics.median(empty_times):+.2f} s")
    print("breakdown (one process): " + ", ".join(f"{name.replace('_', ' ')} {seconds:.2f} s"
                                                   for name, seconds in parts.items()))
    own = sum(parts[name] for name in ("our_imports", "preflight", "category_flow", "report")) - parts["another_empty_flow"]
    print(f"what the rerun adds to an empty flow (our imports + preflight + category flow + report, less the one "
          f"flow run an empty flow also makes; one process): {own:.2f} s "
          f"({'within' if own <= 1.5 else 'over'} the 1.5 s target)")


if __name__ == "__main__":
    main()
