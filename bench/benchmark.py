"""Benchmark: MuSc kernels against the reference formulations, in one run on one machine.

    python bench/benchmark.py                      # MSM, LNAMD, matmul rate, extraction
    python bench/benchmark.py --scaling 50,100,200 # + the out-of-core score stage at several N

Other benchmarks: bench/rerun.py (a cached rerun against an empty Prefect flow), bench/evaluate.py
(the evaluate stage), bench/fast_mode.py (msm_precision bf16-fast against fp32), bench/gpu_check.sh
(the GPU tests and the paper's settings on a GPU).

Every ratio is measured in this run on the same inputs; each measurement that reports memory
runs in a fresh process so that its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(size: int = 4096, depth: int = 256, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) at a shape like MSM's tiles."""
    a, b = torch.randn(size, depth), torch.randn(depth, size)
    return 2 * size * size * depth / best_of(lambda: a @ b, repeats) / 1e9


def unfold_lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """The reference's LNAMD formulation: LayerNorm, nn.Unfold, 1-D adaptive average pool."""
    n, n_tokens, channels = tokens.shape
    side = int((n_tokens - 1) ** 0.5)
    grid = tokens[:, 1:].reshape(n, side, side, channels).permute(0, 3, 1, 2)
    grid = torch.nn.LayerNorm([channels, side, side], elementwise_affine=False)(grid)
    patches = torch.nn.Unfold(r, padding=(r - 1) // 2)(grid)  # (N, C*r*r, L)
    patches = patches.transpose(1, 2).reshape(n * side * side, 1, channels * r * r)
    return F.adaptive_avg_pool1d(patches, channels).reshape(n, side * side, channels)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


REAL_IMAGES = ROOT.parent / "shared" / "data" / "real" / "bottle" / "test"


def msm_features(source: str, n: int, patches: int, channels: int) -> torch.Tensor:
    """MSM input (N, L, C): L2-normalised Gaussian features, or LNAMD features (r = 3, last block)
    of real MVTec AD bottle images through the seeded demo backbone (patch 8, so L = patches)."""
    if source == "random":
        torch.manual_seed(0)
        return F.normalize(torch.randn(n, patches, channels), dim=-1)
    import warnings
    from PIL import Image
    from musc import aggregate
    from musc.inputs.backbones import load_backbone, preprocess
    size = 8 * int(patches ** 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_backbone(str(ROOT / "musc" / "inputs" / "demo_vit.json"), "none", size, [3], device="cpu")
    images = [preprocess(Image.open(p).convert("RGB"), size) for p in sorted(REAL_IMAGES.glob("*/*.png"))[:n]]
    with torch.no_grad():
        tokens, _ = model.extract(torch.stack(images))
    return aggregate(tokens[0], 3)


def _measure_msm(kind: str, source: str, n: int, patches: int, channels: int, block: int, repeats: int,
                 queue) -> None:
    from musc.method.msm import mutual_scores, reference_mutual_scores
    from musc.method.screening import BlockScreen
    features = msm_features(source, n, patches, channels)
    parts = {"screened": 0, "fp32": 0, "candidates": 0, "segments": 0}
    screen = BlockScreen.minima

    def counted(self, a0, a1, b0, b1):
        before = self.candidates
        result = screen(self, a0, a1, b0, b1)
        parts["fp32" if result is None else "screened"] += 1
        if result is not None:
            parts["segments"] += 2 * (a1 - a0) * (b1 - b0) * self.n_patches
            parts["candidates"] += self.candidates - before
        return result
    BlockScreen.minima = counted
    if kind == "reference":
        compute = lambda: reference_mutual_scores(features)  # noqa: E731
    else:
        compute = lambda: mutual_scores(features, block_size=block, precision=kind)  # noqa: E731
    seconds = best_of(compute, repeats)
    scores = compute()
    queue.put({"seconds": seconds, "peak_mb": _peak_rss_mb(), "scores": scores.numpy(), "parts": parts,
               "channels": int(features.shape[-1])})


def _in_fresh_process(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def bench_msm(n: int, patches: int, channels: int, block: int, repeats: int, rate: float, source: str = "random"
              ) -> dict:
    runs = {kind: _in_fresh_process(_measure_msm, kind, source, n, patches, channels, block, repeats)
            for kind in ("fp32", "bf16", "reference")}
    tiled, screened, reference = runs["fp32"], runs["bf16"], runs["reference"]
    channels = tiled["channels"]  # the real features have the backbone's width
    flops = n * (n - 1) / 2 * patches * patches * 2 * channels  # each pair once
    parts = screened["parts"]
    return {"source": source, "N": n, "L": patches, "C": channels, "block_size": block,
            "tiled_s": tiled["seconds"], "bf16_s": screened["seconds"], "reference_s": reference["seconds"],
            "speedup": reference["seconds"] / tiled["seconds"],
            "bf16_speedup": reference["seconds"] / screened["seconds"],
            "max_abs_diff": float(abs(tiled["scores"] - reference["scores"]).max()),
            "bf16_max_abs_diff": float(abs(screened["scores"] - reference["scores"]).max()),
            "bf16_parts_screened": parts["screened"], "bf16_parts_fp32": parts["fp32"],
            "bf16_candidates_per_segment": parts["candidates"] / parts["segments"] if parts["segments"] else None,
            "tiled_gflops": flops / tiled["seconds"] / 1e9,
            "fraction_of_matmul_rate": flops / tiled["seconds"] / 1e9 / rate,
            "tiled_peak_mb": tiled["peak_mb"], "bf16_peak_mb": screened["peak_mb"],
            "reference_peak_mb": reference["peak_mb"]}


def bench_lnamd(n: int, patches: int, channels: int, r: int, repeats: int) -> dict:
    from musc.method.lnamd import layer_norm_average
    torch.manual_seed(0)
    tokens = torch.randn(n, 1 + patches, channels)
    with torch.no_grad():
        ours = best_of(lambda: layer_norm_average(tokens, r), repeats)
        theirs = best_of(lambda: unfold_lnamd(tokens, r), repeats)
        diff = float((layer_norm_average(tokens, r) - unfold_lnamd(tokens, r)).abs().max())
    return {"N": n, "L": patches, "C": channels, "r": r, "pool_s": ours, "unfold_s": theirs,
            "speedup": theirs / ours, "max_abs_diff": diff}


def bench_extraction(backbone: str, image_size: int, layers: list[int], batch: int, repeats: int) -> dict:
    import warnings
    from musc.inputs.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_backbone(backbone, "none", image_size, layers, device="auto")
    images = torch.randn(batch, 3, image_size, image_size)
    seconds = best_of(lambda: model.extract(images), repeats)
    return {"backbone": Path(backbone).name, "image_size": image_size, "device": str(model.device),
            "batch": batch, "images_per_s": batch / seconds}


def _measure_score_stage(n: int, patches: int, channels: int, block: int, queue) -> None:
    """The out-of-core score stage (tiles on disk) on synthetic features: time and peak memory."""
    import numpy as np
    from musc import MuscConfig, store
    from musc.stages import score as score_stage
    folder = Path(tempfile.mkdtemp(prefix="musc-bench-"))
    generator = np.random.default_rng(0)
    aggregate_path = folder / "aggregate" / "a.h5"

    def fill(f):
        features = f.create_dataset("features", shape=(1, n, patches, channels), dtype="float32",
                                    chunks=(1, 1, patches, channels))
        for start in range(0, n, 10):
            chunk = generator.standard_normal((min(10, n - start), patches, channels)).astype(np.float32)
            features[0, start:start + chunk.shape[0]] = chunk / np.linalg.norm(chunk, axis=-1, keepdims=True)
    digest = store.write_artifact(aggregate_path, "aggregate", {}, {}, {}, fill=fill)
    extract_path = folder / "extract" / "e.h5"
    names = [f"x/{i}.png" for i in range(n)]  # the score stage reads only the image list of the extract
    extract_digest = store.write_artifact(extract_path, "extract", {}, {}, {
        "paths": names, "names": names, "digests": names, "defect_types": ["x"] * n, "labels": np.zeros(n, np.int64),
        "has_mask": np.zeros(n, bool), "skipped": np.zeros(0, dtype=object), "tokens": np.zeros((1, n, 1, 1)),
        "embeddings": np.zeros((n, 1)), "masks": np.zeros((n, 1, 1), np.uint8)})
    settings = MuscConfig(block_size=block, device="cpu").score
    start = time.perf_counter()
    plan = score_stage.plan({"path": str(aggregate_path), "digest": digest},
                            {"path": str(extract_path), "digest": extract_digest}, settings, 1)
    score_stage.build(Path(plan.path), plan)
    seconds = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    queue.put({"seconds": seconds, "peak_mb": _peak_rss_mb()})


def bench_scaling(sizes: list[int], patches: int, channels: int, block: int) -> list[dict]:
    rows = []
    for n in sizes:
        measured = _in_fresh_process(_measure_score_stage, n, patches, channels, block)
        rows.append({"N": n, "seconds": measured["seconds"], "seconds_per_pair_ms":
                     measured["seconds"] / (n * (n - 1) / 2) * 1e3, "peak_mb": measured["peak_mb"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--grid", type=int, default=27, help="patch grid side (L = grid^2)")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default=str(ROOT / "musc" / "inputs" / "demo_vit.json"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--layers", default="0,1,2,3")
    parser.add_argument("--scaling", default="", help="comma-separated N for the score-stage scaling table")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    patches = args.grid * args.grid
    rate = matmul_rate(depth=args.channels)
    results = {"threads": torch.get_num_threads(), "fp32_matmul_gflops": rate,
               "msm": bench_msm(args.n, patches, args.channels, args.block_size, args.repeats, rate),
               "msm_real": (bench_msm(args.n, patches, args.channels, args.block_size, args.repeats, rate, "bottle")
                            if REAL_IMAGES.is_dir() else None),
               "lnamd": bench_lnamd(args.n, patches, args.channels, 5, args.repeats),
               "extraction": bench_extraction(args.backbone, args.image_size,
                                              [int(v) for v in args.layers.split(",")], 8, args.repeats)}
    if args.scaling:
        results["scaling"] = bench_scaling([int(v) for v in args.scaling.split(",")], patches, args.channels,
                                           args.block_size)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    msm, lnamd, extraction = results["msm"], results["lnamd"], results["extraction"]
    print(f"threads: {results['threads']}   fp32 matmul: {rate:.1f} GFLOP/s")
    print(f"MSM   N={msm['N']} L={msm['L']} C={msm['C']} block={msm['block_size']}: tiled {msm['tiled_s']:.3f}s, "
          f"per-image cdist reference {msm['reference_s']:.3f}s -> {msm['speedup']:.2f}x faster; "
          f"max |diff| {msm['max_abs_diff']:.2e}")
    print(f"      tiled rate {msm['tiled_gflops']:.1f} GFLOP/s = {msm['fraction_of_matmul_rate']:.2f} of the "
          f"fp32 matmul rate; peak memory (whole process) tiled {msm['tiled_peak_mb']:.0f} MB, "
          f"reference {msm['reference_peak_mb']:.0f} MB")
    for row in filter(None, (msm, results["msm_real"])):
        screened = (f"{row['bf16_parts_screened']} of {row['bf16_parts_screened'] + row['bf16_parts_fp32']} parts "
                    "screened" + (f", {row['bf16_candidates_per_segment']:.2f} candidates per segment"
                                  if row["bf16_candidates_per_segment"] is not None else ""))
        print(f"MSM bf16-screened, {row['source']} features (C={row['C']}): {row['bf16_s']:.3f}s vs fp32 tiled "
              f"{row['tiled_s']:.3f}s ({row['tiled_s'] / row['bf16_s']:.2f}x) and reference {row['reference_s']:.3f}s "
              f"-> {row['bf16_speedup']:.2f}x faster; max |diff| {row['bf16_max_abs_diff']:.2e}; {screened}")
    print(f"LNAMD N={lnamd['N']} r={lnamd['r']}: avg-pool {lnamd['pool_s'] * 1e3:.1f} ms, unfold "
          f"{lnamd['unfold_s'] * 1e3:.1f} ms -> {lnamd['speedup']:.1f}x faster; max |diff| {lnamd['max_abs_diff']:.2e}")
    print(f"extraction: {extraction['backbone']} at {extraction['image_size']} px on {extraction['device']}: "
          f"{extraction['images_per_s']:.1f} images/s")
    for row in results.get("scaling", []):
        print(f"score stage N={row['N']:5d}: {row['seconds']:8.1f}s  ({row['seconds_per_pair_ms']:.2f} ms per "
              f"image pair)  peak memory (whole process) {row['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
