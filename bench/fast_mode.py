"""bf16-fast against fp32, the whole method in one process: speed, largest score difference, metrics.

    python bench/fast_mode.py                       # the two demo categories and the real bottle images
    python bench/fast_mode.py --image-size 256

Tokens are extracted once per set (demo backbone musc/inputs/demo_vit.json, seeded random weights), then
the method runs twice on them (fp32, bf16-fast). Times are MSM + LNAMD + maps + RsCIN (the part the
precision changes), measured in this run. The real bottle images have no masks here: their image
metrics come from the folder labels (good vs every defect folder), pixel metrics are n/a.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL_ROOT = ROOT.parent / "shared" / "data" / "real"
DEMO_BACKBONE = str(ROOT / "musc" / "inputs" / "demo_vit.json")


def tokens_of(category, image_size: int):
    """Layer tokens, embeddings, labels, masks and whether each image has a mask."""
    from musc.inputs.backbones import load_backbone
    from musc.inputs.images import load_image, load_mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_backbone(DEMO_BACKBONE, "none", image_size, [0, 1, 2, 3], device="cpu")
    layers, embeddings = [[] for _ in range(4)], []
    samples = category.samples
    for start in range(0, len(samples), 8):
        batch = torch.stack([model.preprocess(load_image(s.path)) for s in samples[start:start + 8]])
        tokens, embedding = model.extract(batch)
        for layer, t in zip(layers, tokens):
            layer.append(t)
        embeddings.append(embedding)
    labels = np.array([-1 if s.label is None else s.label for s in samples])
    has_mask = np.array([s.mask_path is not None for s in samples])
    masks = np.stack([load_mask(s.mask_path, image_size, category.mask_rule) for s in samples])
    return [torch.cat(layer) for layer in layers], torch.cat(embeddings), labels, masks, has_mask


def compare(name: str, category, image_size: int, repeats: int) -> dict:
    from musc.method.pipeline import score_images
    from musc.outputs.evaluation import evaluate_arrays
    tokens, embeddings, labels, masks, has_mask = tokens_of(category, image_size)
    runs = {}
    for precision in ("fp32", "bf16-fast"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = score_images(tokens, embeddings, image_size, (1, 3, 5), block_size=8, precision=precision)
            times.append(time.perf_counter() - start)
        metrics, _ = evaluate_arrays(labels, result["image_scores"], masks, result["maps"], has_mask)
        runs[precision] = {"seconds": min(times), "result": result, "metrics": metrics}
    exact, fast = runs["fp32"], runs["bf16-fast"]
    from musc.method.lnamd import aggregate
    from musc.method.msm import mutual_scores
    features = aggregate(tokens[-1], 3)  # MSM alone, one layer, interleaved twice: steadier on a busy machine
    msm = {"fp32": [], "bf16-fast": []}
    for _ in range(2):
        for precision in msm:
            start = time.perf_counter()
            mutual_scores(features, block_size=8, precision=precision)
            msm[precision].append(time.perf_counter() - start)
    deltas = {k: (fast["metrics"][k] - exact["metrics"][k]) * 100 for k in exact["metrics"]}
    return {"set": name, "N": len(labels), "image_size": image_size,
            "fp32_s": exact["seconds"], "fast_s": fast["seconds"], "speedup": exact["seconds"] / fast["seconds"],
            "msm_fp32_s": min(msm["fp32"]), "msm_fast_s": min(msm["bf16-fast"]),
            "max_map_diff": float(np.abs(fast["result"]["maps"] - exact["result"]["maps"]).max()),
            "map_range": float(np.ptp(exact["result"]["maps"])),
            "max_image_score_diff": float(np.abs(fast["result"]["image_scores"] - exact["result"]["image_scores"]).max()),
            "fp32_metrics": {k: v * 100 for k, v in exact["metrics"].items()}, "delta_points": deltas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sets", default="demo,real", help="which sets: demo, real or both")
    args = parser.parse_args()
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_dataset
    sets = []
    with tempfile.TemporaryDirectory() as scratch:
        make_dataset(Path(scratch), seed=0)
        for category in ("fabric", "washer") if "demo" in args.sets else ():
            sets.append((f"demo {category}", load_category("mvtec_ad", scratch, category)))
        if "real" in args.sets and (REAL_ROOT / "bottle" / "test").is_dir():
            sets.append(("real bottle", load_category("mvtec_ad", str(REAL_ROOT), "bottle")))
        rows = [compare(name, category, args.image_size, args.repeats) for name, category in sets]
    for row in rows:
        shown = ", ".join(f"{k} {v:+.3f}" for k, v in row["delta_points"].items() if not math.isnan(v))
        print(f"{row['set']} (N={row['N']}, {row['image_size']} px): fp32 {row['fp32_s']:.2f}s, bf16-fast "
              f"{row['fast_s']:.2f}s -> {row['speedup']:.2f}x; max |map diff| {row['max_map_diff']:.2e} "
              f"(map range {row['map_range']:.3f}), max |image score diff| {row['max_image_score_diff']:.2e}")
        print(f"    MSM alone (one layer, r=3, best of 2 interleaved): fp32 {row['msm_fp32_s']:.2f}s, bf16-fast "
              f"{row['msm_fast_s']:.2f}s -> {row['msm_fp32_s'] / row['msm_fast_s']:.2f}x")
        print(f"    metric change (points, x100): {shown}")
        print("    fp32 metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in row["fp32_metrics"].items()
                                                 if not math.isnan(v)))


if __name__ == "__main__":
    main()
