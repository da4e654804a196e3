"""Retrieval for large pools (``pool_top_k``), measured: new parts scored against a pool exactly
(every pool image) and against their k nearest pool images only, in one run on one machine.

    python bench/retrieval.py                            # pool of 200, k = 5, 10, 25, 50
    python bench/retrieval.py --pool 300 --k 5,10,25,50,100 --good 60 --defects 10

Data: generated fabric parts with defects (``musc.inputs.synthetic.make_dataset``: the pool is made
of good parts; the new parts are other good parts and parts with holes, scratches and stains), at
the demo settings (the demo backbone with seeded random weights at 128 px, layers 0-3, degrees 1,
3, 5). The pool is written with the pool's own writer (its exact leave-one-out calibration
included); the new parts are scored as the pool_score stage scores them (``PoolFile.score``, with
the retrieved images per part), then decided at the calibrated threshold of the same k
(``DecisionRule(pool_top_k=k).apply``). Printed per k: the time per part (retrieval included; the
pool's embeddings and the k calibration are one-time costs per opened pool, printed apart), the
speed-up, the image AUROC (scikit-learn) and its change, the largest score change, the decisions
that differ from the exact ones, and the decisions had the exact threshold been used instead.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=200, help="good parts in the pool")
    parser.add_argument("--good", type=int, default=40, help="new good parts")
    parser.add_argument("--defects", type=int, default=8, help="new defective parts per defect kind (3 kinds)")
    parser.add_argument("--k", default="5,10,25,50", help="the pool_top_k values, comma-separated")
    parser.add_argument("--rate", type=float, default=0.01, help="the calibrated rule's false-alarm rate")
    parser.add_argument("--repeat", type=int, default=2, help="timed scorings per setting (the best is kept)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from musc.inputs.backbone_spec import DEMO_BACKBONE, backbone_settings
    from musc.inputs.backbones import backbone_for
    from musc.inputs.config import MuscConfig
    from musc.inputs.synthetic import make_dataset
    from musc.method.lnamd import aggregate
    from musc.reference_pool import DecisionRule, Images, PoolFile, PoolSettings, write_pool
    from musc.reference_pool.retrieval import calibration_scores, embedding_of, nearest, pool_embeddings
    from musc.reference_pool.scoring import image_scores

    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}; torch threads "
          f"{torch.get_num_threads()}, cores {os.cpu_count()}")
    config = MuscConfig(backbone=DEMO_BACKBONE, pretrained="none", image_size=128, layers=(0, 1, 2, 3), device="cpu")
    base = Path(tempfile.mkdtemp(prefix="musc-retrieval-"))
    data = make_dataset(base / "data", n_good=args.pool + args.good, n_per_defect=args.defects, size=128,
                        seed=args.seed, categories=("fabric",))
    goods = sorted((data / "fabric/test/good").glob("*.png"))
    defects = sorted(p for p in (data / "fabric/test").glob("*/*.png") if p.parent.name != "good")
    backbone = backbone_for(config.extract)

    def features_of(paths):  # {r: (layers, n, L, C)}, as the features stage makes them
        found = {r: [] for r in config.r_list}
        with torch.no_grad():
            for start in range(0, len(paths), 16):
                tokens, _ = backbone.extract(torch.stack([backbone.preprocess(Image.open(p).convert("RGB"))
                                                          for p in paths[start:start + 16]]))
                for r in config.r_list:
                    found[r].append(np.stack([aggregate(t, r).numpy() for t in tokens]))
        return {r: np.concatenate(f, axis=1) for r, f in found.items()}
    pooled = features_of(goods[:args.pool])
    started = time.perf_counter()
    write_pool(base / "pool.h5", PoolSettings("fabric", backbone_settings(config.extract), tuple(config.r_list),
                                              config.score),
               [Images([p.name for p in goods[:args.pool]], [f"pool-{i}" for i in range(args.pool)],
                       np.zeros(args.pool), lambda r, layer, idx: pooled[r][layer, np.sort(idx)],
                       pooled[1].shape[2:])], args.pool, {})
    written = time.perf_counter() - started
    new_paths = goods[args.pool:] + defects
    labels = np.array([0] * args.good + [1] * len(defects))
    new = features_of(new_paths)
    pool = PoolFile(base / "pool.h5")
    settings = pool.settings
    L, C = pool.feature_shape
    print(f"pool: {len(pool)} good parts (written and calibrated exactly in {written:.1f} s); new parts: "
          f"{args.good} good + {len(defects)} defective; demo backbone at 128 px: L = {L}, C = {C}, "
          f"{len(settings.layers)} layers x {len(settings.r_list)} degrees")

    def score(k):
        """(scores, seconds per part): every new part, a chunk of parts at a time as the stage does."""
        best, scores = float("inf"), np.empty(len(new_paths))
        for _ in range(args.repeat):
            started = time.perf_counter()
            for start, stop in settings.chunks(len(new_paths)):
                part = {r: new[r][:, start:stop] for r in config.r_list}
                chosen = None if k is None else nearest(
                    pool, np.stack([embedding_of({r: part[r][:, [i]] for r in part}, settings)
                                    for i in range(stop - start)]), k)
                per_degree = [torch.stack([pool.score(torch.from_numpy(part[r][layer]), r, layer, chosen)
                                           for layer in range(len(settings.layers))]) for r in settings.r_list]
                scores[start:stop] = image_scores(per_degree, settings.image_size)
            best = min(best, time.perf_counter() - started)
        return scores.copy(), best / len(new_paths)

    started = time.perf_counter()
    pool_embeddings(pool)
    embedded = time.perf_counter() - started
    exact, exact_time = score(None)
    exact_threshold = DecisionRule(false_alarm_rate=args.rate).apply(pool)[0]
    exact_flags = exact >= exact_threshold
    exact_auroc = roc_auc_score(labels, exact) * 100

    def flagged(flags):
        return f"{int(flags[labels == 1].sum())}/{int((labels == 1).sum())} defects, " \
               f"{int(flags[labels == 0].sum())}/{int((labels == 0).sum())} good"
    print(f"the pool's embeddings: {embedded * 1000:.0f} ms once per opened pool")
    print(f"calibrated rule: false-alarm rate {args.rate:g}; exact threshold {exact_threshold:.5f} flags "
          f"{flagged(exact_flags)}")
    print()
    print("| pool_top_k | per part | speed-up | image AUROC (change) | max score change | threshold (k calibration "
          "time) | decisions changed | flagged | with the exact threshold instead: changed, flagged |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| exact ({len(pool)}) | {exact_time * 1000:.1f} ms | 1.00x | {exact_auroc:.2f} | 0 | {exact_threshold:.5f} "
          f"| 0 | {flagged(exact_flags)} | - |")
    for k in [int(v) for v in args.k.split(",")]:
        scores, per_part = score(k)
        started = time.perf_counter()
        calibration_scores(pool, k)
        calibrated = time.perf_counter() - started
        threshold = DecisionRule(false_alarm_rate=args.rate, pool_top_k=k).apply(pool)[0]
        flags = scores >= threshold
        naive = scores >= exact_threshold
        auroc = roc_auc_score(labels, scores) * 100
        print(f"| {k} | {per_part * 1000:.1f} ms | {exact_time / per_part:.2f}x | {auroc:.2f} ({auroc - exact_auroc:+.2f}) "
              f"| {np.abs(scores - exact).max():.4f} | {threshold:.5f} ({calibrated:.1f} s) "
              f"| {int((flags != exact_flags).sum())} | {flagged(flags)} | {int((naive != exact_flags).sum())}, "
              f"{flagged(naive)} |")
    print()
    print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
