"""Tiling of high-resolution parts: cost, and what it finds.

On generated 512 px plates with pits of 6-10 px (musc.inputs.synthetic.make_parts), with the tiny
demo backbone (musc/inputs/demo_vit.json, random weights, CPU):

1. time per stage and peak RSS of a tiled run (2 x 2 tiles at image size S, default 64) against an
   untiled run at twice the image size (2 S: four times the pixels, as many as the four tiles), each
   in a fresh process (peak RSS: that process's VmHWM, read after classify and after evaluate);
2. pixel AUROC and AUPRO of the tiled run against the untiled run at the same image size (64), for
   several data seeds, both judged on the same pixels: the masks at the images' full resolution,
   untiled maps upsampled bilinearly to it.

    python bench/tiling.py                       # 16 images per seed, seeds 0 1 2
    python bench/tiling.py --image-size 128 --seeds 0  # larger patch grids: 2 x 2 at 128 vs 256
    python bench/tiling.py --msm                       # MSM alone at the paper's patch grid

With the tiny backbone the patch grids are small (8 x 8 at 64) and each stage's fixed costs (a part
file per MSM tile, one forward per batch) weigh more than its arithmetic; ``--msm`` measures MSM
alone on random L2-normalised features at the paper's grid (37 x 37 patches of C = 1024 per tile,
against 74 x 74 for the whole image at twice the size), where the arithmetic dominates.

The figures are in docs/PERFORMANCE.md (Tiling).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"backbone": str(ROOT / "musc" / "inputs" / "demo_vit.json"), "pretrained": "none", "layers": [0, 1, 2, 3],
        "batch_size": 4, "block_size": 8, "device": "cpu", "r_list": [1, 3]}
SIZE = 512


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(job: dict) -> dict:
    """One run (every stage, evaluate included), timed per stage, in this process."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from musc import store
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.inputs.images import load_mask
    from musc.method.metrics import pixel_metrics
    from musc.stages import Run, ensure, walk
    torch.set_num_threads(job["threads"])
    category = load_category("mvtec_ad", job["data"], "plate")
    run = Run(category, MuscConfig(**job["config"]), job["artifacts"])
    seconds, peaks, refs = {}, {}, {}

    def timed(spec, plans):
        started = time.perf_counter()
        refs[spec.name] = [ensure(p)[0] for p in plans]
        seconds[spec.name] = round(time.perf_counter() - started, 2)
        peaks[spec.name] = round(peak_rss_mb())  # the process's peak so far: up to and with this stage
        return refs[spec.name]
    walk(run, timed)
    result = {"seconds": seconds, "peak_rss_mb": peaks}
    maps = torch.from_numpy(store.open_artifact(refs["classify"][0]["path"]).read("maps"))
    result["map_shape"] = list(maps.shape)
    if maps.shape[-1] != SIZE:
        maps = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=True)[:, 0]
    masks = np.stack([load_mask(s.mask_path, SIZE, category.mask_rule) for s in category.samples]).astype(bool)
    metrics = pixel_metrics(masks, maps.numpy())
    result.update({k: round(float(metrics[k]), 4) for k in ("pixel_auroc", "pixel_aupro")})
    return result


def msm_child(job: dict) -> dict:
    """MSM of N images, one layer: ``sets`` sets of g x g patches each (random features), timed."""
    import torch
    from musc.method.msm import mutual_scores
    torch.set_num_threads(job["threads"])
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(job["sets"]):
        features = torch.randn(job["images"], job["grid"] ** 2, job["channels"], generator=generator)
        mutual_scores(features / features.norm(dim=-1, keepdim=True), block_size=job["block_size"])
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb())}


def in_fresh_process(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="plates per seed (3/8 of them with a pit)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64, help="S of the tiled run and the untiled one at "
                                                                   "the same size (the other untiled run: 2 S)")
    parser.add_argument("--msm", action="store_true", help="MSM alone on random features at the paper's grid")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(msm_child(job) if job.get("msm") else child(job)))
        return
    if args.msm:
        print(f"MSM of {args.images} images, one layer, C = 1024, block_size 2, {args.threads} threads, random "
              f"features; each a fresh process")
        for name, sets, grid in (("2 x 2 tiles: 4 sets of 37 x 37 patches", 4, 37),
                                 ("whole image at twice the size: 74 x 74 patches", 1, 74)):
            result = in_fresh_process({"msm": True, "images": args.images, "sets": sets, "grid": grid,
                                       "channels": 1024, "block_size": 2, "threads": args.threads})
            print(f"{name:48s} | {result['seconds']:7.1f} s | peak RSS {result['peak_rss_mb']} MB", flush=True)
        return
    from musc.inputs.synthetic import make_parts
    n_defective = max(1, args.images * 3 // 8)
    size = args.image_size
    runs = {f"tiled 2x2 at {size}": {"image_size": size, "tiles": [2, 2]},
            f"untiled at {2 * size}": {"image_size": 2 * size},
            f"untiled at {size}": {"image_size": size}}
    with tempfile.TemporaryDirectory() as scratch:
        print(f"{args.images} plates of {SIZE} px per seed ({n_defective} with a pit of 6-10 px), demo ViT "
              f"(patch 8, random weights), CPU, {args.threads} threads; each run a fresh process, every stage")
        for seed in args.seeds:
            data = make_parts(Path(scratch) / f"data{seed}", n_good=args.images - n_defective,
                              n_defective=n_defective, size=SIZE, seed=seed)
            for name, changes in runs.items():
                job = {"data": str(data), "artifacts": str(Path(scratch) / f"artifacts{seed}"),
                       "config": {**TINY, **changes}, "threads": args.threads}
                result = in_fresh_process(job)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items())
                peaks = result["peak_rss_mb"]
                print(f"seed {seed} | {name:16s} | total {sum(result['seconds'].values()):6.1f} s ({stages}) | "
                      f"peak RSS through classify {peaks['classify']} MB, with evaluate {peaks['evaluate']} MB | "
                      f"maps {result['map_shape']} | "
                      f"pixel AUROC {result['pixel_auroc']:.4f} | AUPRO {result['pixel_aupro']:.4f}", flush=True)


if __name__ == "__main__":
    main()
