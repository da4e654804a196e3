"""Every call at the machine's speed: ``musc score-new`` as a user runs it (a command, a fresh
process each), its first call after the pool was written and its second, per part, beside the
FLOP bound measured on this machine.

    python bench/calls.py                          # a 300-image pool, 50 parts per call
    python bench/calls.py --before 85c33c3         # and the code of that commit, side by side
    python bench/calls.py --pool-size 100 --parts 20
    python bench/calls.py --model ViT-B-16 --parts 20   # open_clip's ViT-B-16 (random weights), 224 px

Setting: the seeded demo backbone at 128 px (L = 256 patches), layers 0-3, r_list (1, 3, 5), or
with ``--model ViT-B-16`` open_clip's ViT-B-16 with seeded random weights (no model hub here: the
same arithmetic as the OpenAI weights) at its native 224 px (L = 196, C = 768), layers 2, 5, 8, 11;
the pool holds the LNAMD features of ``--pool-size`` generated good images. Calls, each a fresh
``musc score-new`` process: one part (what a call costs before its parts: start-up, backbone, pool
opened and verified), then ``--parts`` new parts (the first call after the pool was written: its
digest not yet recorded), then ``--parts`` other new parts (the second call). Per part: the call's
wall time over its parts, and per extra part (minus the one-part call). The FLOP bound is the votes'
products, 2 L (C + 2) L per pool image, layer and degree, at the fp32 matrix rate measured here on
every core (``bench/benchmark.matmul_rate``: a 4096 x 256 x 4096 product).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "bench"))
from benchmark import matmul_rate  # noqa: E402 - bench/benchmark.py, beside this file
from trees import commit_tree  # noqa: E402 - bench/trees.py
R_LIST = (1, 3, 5)
MODELS = {"demo": (128, (0, 1, 2, 3)), "ViT-B-16": (224, (2, 5, 8, 11))}  # image size, layers


def make_pool(tree: Path, base: Path, pool_size: int, parts: int, model: str) -> tuple[Path, list[Path]]:
    """The pool (written with the code of ``tree``) and 1 + 2 x ``parts`` new parts' files."""
    sys.path.insert(0, str(tree))
    import warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import torch
    from PIL import Image

    import musc.inputs.backbones as backbones
    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.config import MuscConfig
    from musc.inputs.synthetic import make_dataset
    from musc.method.lnamd import aggregate
    from musc.reference_pool import Images, PoolSettings, write_pool
    image_size, layers = MODELS[model]
    backbone_name = model if model != "demo" else str(next(
        p for p in (tree / "musc/inputs/demo_vit.json", tree / "configs/demo_vit.json") if p.is_file()))
    config = MuscConfig(backbone=backbone_name, pretrained="none", image_size=image_size, layers=layers,
                        r_list=R_LIST, device="cpu")
    data = make_dataset(base / "data", n_good=pool_size + 1 + 2 * parts, n_per_defect=1, size=image_size, seed=3,
                        categories=("fabric",))
    images = sorted((data / "fabric/test/good").glob("*.png"))
    backbone = backbones.backbone_for(config.extract)
    features = {r: [] for r in R_LIST}
    with torch.no_grad():
        for start in range(0, pool_size, 16):
            tokens, _ = backbone.extract(torch.stack([backbone.preprocess(Image.open(p).convert("RGB"))
                                                      for p in images[start:min(start + 16, pool_size)]]))
            for r in R_LIST:
                features[r].append(np.stack([aggregate(t, r).numpy() for t in tokens]))
    features = {r: np.concatenate(f, axis=1) for r, f in features.items()}
    pool = base / "pool.h5"
    write_pool(pool, PoolSettings("fabric", backbone_settings(config.extract), R_LIST),
               [Images([p.name for p in images[:pool_size]], [f"pool-{i}" for i in range(pool_size)],
                       np.zeros(pool_size), lambda r, layer, idx: features[r][layer, np.sort(idx)],
                       features[1].shape[2:])], pool_size, {})
    incoming = base / "incoming"
    incoming.mkdir()
    new = []
    for index, source in enumerate(images[pool_size:]):
        new.append(incoming / f"part_{index:03d}.png")
        shutil.copy(source, new[-1])
    print(json.dumps({"channels": int(features[1].shape[-1]), "patches": int(features[1].shape[-2])}))
    return pool, new


def score_new(tree: Path, base: Path, pool: Path, parts: list[Path], name: str) -> float:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(base / "prefect")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "score-new", "--pool", str(pool), "--threshold", "0.5",
                    "--device", "cpu", "--out", str(base / name), *map(str, parts)], cwd=tree, env=env, check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - started


def measure(tree: Path, pool_size: int, parts: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        made = subprocess.run([sys.executable, __file__, "--make", str(tree), "--base", str(base), "--pool-size",
                               str(pool_size), "--parts", str(parts), "--model", model],
                              capture_output=True, text=True, check=True)
        shape = json.loads(made.stdout.strip().splitlines()[-1])
        new = sorted((base / "incoming").glob("*.png"))
        pool = base / "pool.h5"
        one = score_new(tree, base, pool, new[:1], "one")
        first = score_new(tree, base, pool, new[1:1 + parts], "first")
        second = score_new(tree, base, pool, new[1 + parts:1 + 2 * parts], "second")
    return {"one": one, "first": first, "second": second, **shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--before", help="a commit to measure beside this tree (a git worktree of it)")
    parser.add_argument("--model", choices=sorted(MODELS), default="demo",
                        help="the backbone: the demo's (128 px) or open_clip's ViT-B-16 (224 px), random weights")
    parser.add_argument("--make", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_pool(Path(args.make), Path(args.base), args.pool_size, args.parts, args.model)
        return
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}")
    rate = matmul_rate()  # torch's default threads, alone
    with contextlib.ExitStack() as stack:
        trees = {f"before {args.before}": stack.enter_context(commit_tree(args.before))} if args.before else {}
        results = {name: measure(tree, args.pool_size, args.parts, args.model) for name, tree in {**trees, "this tree": HERE}.items()}
    some = next(iter(results.values()))
    layers = MODELS[args.model][1]
    pair = 2 * some["patches"] * (some["channels"] + 2) * some["patches"] * len(layers) * len(R_LIST)
    bound = args.pool_size * pair / (rate * 1e9)
    print(f"fp32 rate {rate:.1f} GFLOP/s on every core; FLOP bound per part against {args.pool_size} pool images "
          f"({args.model}, L {some['patches']}, C {some['channels']}, {len(layers)} layers, {len(R_LIST)} degrees): {bound:.3f} s")
    print("| code | one-part call s | first call s/part | second call s/part | first/second | "
          "first extra part s (x bound) | second extra part s (x bound) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        extra = [(r[call] - r["one"]) / max(1, args.parts - 1) for call in ("first", "second")]
        print(f"| {name} | {r['one']:.2f} | {r['first'] / args.parts:.3f} | {r['second'] / args.parts:.3f} | "
              f"{r['first'] / r['second']:.2f} | {extra[0]:.3f} ({extra[0] / bound:.2f}x) | "
              f"{extra[1]:.3f} ({extra[1] / bound:.2f}x) |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
