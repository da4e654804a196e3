"""The line's work per part, before and after it became stages of the graph: for a day of new parts
against a pool, what each step does per part: image decodes, backbone forwards, artifact hashes and
wall time.

    python bench/line_work.py                       # this tree only
    python bench/line_work.py --before bfd40ec      # and the code of that commit (a git worktree), side by side

The steps, the same calls in both trees (the line's public functions): score the day (score-new),
score it again (a retry: the same call), record a review (some parts good), add the day's good parts
to the pool (``pool add DAY``), and run the daily flow on the day's folder (Prefect, ephemeral). A
decode is a decode of a part's picture (the parts are the only images of their size); a forward is
one image through the backbone; an artifact hash is a SHA-256 of an HDF5 file (of an artifact, a
part of one, or the pool). Each tree runs in a process of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PART_PX = 96       # the parts' size: no other picture the line reads has it
STEPS = ("score-new", "score-new again", "review", "pool add DAY", "daily flow")


def measure(tree: Path, parts: int, pool_size: int, base: Path) -> dict:
    """Run the steps with the code of ``tree`` (this process imports it), counting per step."""
    sys.path.insert(0, str(tree))
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import torch
    from PIL import Image, ImageFile

    import musc.inputs.backbones as backbones
    try:  # where the trees keep the SHA-256 of a file (the code before the store's split: files)
        import musc.store.digests as files
    except ImportError:
        import musc.store.files as files
    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.config import MuscConfig
    from musc.inputs.synthetic import make_dataset
    from musc.reference_pool import (DecisionRule, Images, PoolSettings, add_day_to_pool, record_verdicts,
                                     score_new_images, write_pool)
    demo = next(p for p in (tree / "musc/inputs/demo_vit.json", tree / "configs/demo_vit.json") if p.is_file())
    config = MuscConfig(backbone=str(demo), pretrained="none", image_size=64,
                        layers=(0, 1, 2, 3), r_list=(1, 3), device="cpu", block_size=8)
    data = make_dataset(base / "data", n_good=pool_size + parts, n_per_defect=max(1, parts // 20), size=PART_PX,
                        seed=3, categories=("fabric",))
    images = sorted((data / "fabric/test/good").glob("*.png"))
    defects = sorted(p for p in (data / "fabric/test").glob("*/*.png") if p.parent.name != "good")
    backbone = backbones.backbone_for(config.extract)
    features = {r: [] for r in config.r_list}
    with torch.no_grad():
        for start in range(0, pool_size, 16):
            tokens, _ = backbone.extract(torch.stack([backbone.preprocess(Image.open(p).convert("RGB"))
                                                      for p in images[start:min(start + 16, pool_size)]]))
            for r in config.r_list:
                from musc.method.lnamd import aggregate
                features[r].append(np.stack([aggregate(t, r).numpy() for t in tokens]))
    features = {r: np.concatenate(f, axis=1) for r, f in features.items()}
    pool = base / "pool.h5"
    names = [p.name for p in images[:pool_size]]
    write_pool(pool, PoolSettings("fabric", backbone_settings(config.extract), tuple(config.r_list)),
               [Images(names, [f"pool-{i}" for i in range(pool_size)], np.zeros(pool_size),
                       lambda r, layer, idx: features[r][layer, np.sort(idx)], features[1].shape[2:])], pool_size, {})
    day = base / "incoming" / "2026-12-01"
    day.mkdir(parents=True)
    chosen = images[pool_size:pool_size + parts - len(defects[:parts // 5])] + defects[:parts // 5]
    for index, source in enumerate(chosen):
        shutil.copy(source, day / f"part_{index:03d}.png")
    paths = sorted(str(p) for p in day.glob("*.png"))

    counts = {"decodes": 0, "forwards": 0, "artifact hashes": 0}
    real_load, real_extract, real_sha = ImageFile.ImageFile.load, backbones.Backbone.extract, files.file_sha256

    def load(self):
        if getattr(self, "tile", None) and self.size == (PART_PX, PART_PX):
            counts["decodes"] += 1
        return real_load(self)

    def extract(self, batch):
        counts["forwards"] += len(batch)
        return real_extract(self, batch)

    def sha(path):
        if ".h5" in Path(path).name:  # an artifact, a part of one or the pool (or its write in progress)
            counts["artifact hashes"] += 1
        return real_sha(path)
    ImageFile.ImageFile.load, backbones.Backbone.extract, files.file_sha256 = load, extract, sha

    rule = DecisionRule(threshold=0.5)
    out = base / "out"

    def daily():
        os.environ["PREFECT_HOME"] = str(base / "prefect")
        import flows
        from prefect.testing.utilities import prefect_test_harness
        with prefect_test_harness(server_startup_timeout=flows.PREFECT_STARTUP_SECONDS):
            started = time.perf_counter()
            flows.daily_folder_flow(str(pool), str(day.parent), day="2026-12-01", out=str(base / "daily"),
                                    decision={"threshold": 0.5}, review_wait_s=0)
            return time.perf_counter() - started
    steps = {"score-new": lambda: score_new_images(pool, paths, out, rule, device="cpu"),
             "score-new again": lambda: score_new_images(pool, paths, out, rule, device="cpu"),
             "review": lambda: record_verdicts(out, good=paths[:parts // 5]),
             "pool add DAY": lambda: add_day_to_pool(pool, out, device="cpu"),
             "daily flow": daily}
    measured = {}
    for name in STEPS:
        before = dict(counts)
        started = time.perf_counter()
        inner = steps[name]()
        wall = time.perf_counter() - started
        if name == "daily flow":  # the flow's own time, without the temporary server's start and stop
            wall = inner
        measured[name] = {**{k: counts[k] - before[k] for k in counts}, "wall_s": wall}
    return measured


def run_tree(tree: Path, parts: int, pool_size: int) -> dict:
    with tempfile.TemporaryDirectory() as base:
        done = subprocess.run([sys.executable, __file__, "--measure", str(tree), "--parts", str(parts),
                               "--pool-size", str(pool_size), "--base", base],
                              cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    if done.returncode != 0:
        raise SystemExit(f"{tree}: the measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict], parts: int) -> str:
    trees = list(results)
    lines = [f"per part of a day of {parts} parts:", "",
             "| step | " + " | ".join(f"{what} ({tree})" for what in ("decodes", "forwards", "artifact hashes",
                                                                          "wall ms") for tree in trees) + " |",
             "|---|" + "---:|" * (4 * len(trees))]
    for step in STEPS:
        cells = []
        for what in ("decodes", "forwards", "artifact hashes", "wall_s"):
            for tree in trees:
                value = results[tree][step][what] / parts
                cells.append(f"{value * 1000:.0f}" if what == "wall_s" else f"{value:.2f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=200)
    parser.add_argument("--before", help="a commit to measure beside this tree (a git worktree of it)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.parts, args.pool_size, Path(args.base))))
        return
    results = {}
    if args.before:
        from trees import commit_tree  # bench/trees.py, beside this file
        with commit_tree(args.before) as worktree:
            results[f"before {args.before}"] = run_tree(worktree, args.parts, args.pool_size)
    results["after"] = run_tree(HERE, args.parts, args.pool_size)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    print(table(results, args.parts))


if __name__ == "__main__":
    main()
