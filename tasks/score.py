"""Stage 3, score (one per degree r): MSM patch scores of every layer, tile by tile.

Within each subset (divide_num), image blocks (I, J) with I <= J are scored once for both
directions; each tile's nearest-patch votes are written as a part, so a crash loses at most one
tile and finished tiles are never recomputed. The reduction then takes, block by block, the mean
of each patch's smallest votes.
"""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch

from musc import store
from musc.data import Sample, subsets
from musc.msm import image_blocks, msm_rank_window, reduce_votes, tile_minima, tile_pairs

from .stage import Ref, ensure_artifact, fault_point, logger, stage_folder, stage_task
from .versions import code_version


def plan_score(aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float, divide_num: int, seed: int,
               block_size: int) -> Path:
    key = store.stable_hash(code_version("score"), aggregate["digest"], extract["digest"], float(topmin_min),
                            float(topmin_max), int(divide_num), int(seed) if divide_num > 1 else None)
    return stage_folder(aggregate["path"], "score") / f"{key}.h5"


def _subset_indices(extract: Ref, divide_num: int, seed: int) -> list[np.ndarray]:
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    paths = source.read("paths")
    samples = [Sample(str(p), "", "", None, None) for p in paths]
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in subsets(samples, int(divide_num), int(seed))]


def _load_block(features: h5py.Dataset, indices: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(features[:, indices])  # (layers, B, L, C)


def build_score(path: Path, aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float,
                divide_num: int, seed: int, block_size: int) -> None:
    log = logger()
    source = store.open_artifact(aggregate["path"], "aggregate", aggregate["digest"])
    n_layers, n_images, n_patches, _ = source.shape("features")
    scores = np.full((n_layers, n_images, n_patches), np.nan)
    with h5py.File(source.path, "r") as f:
        features = f["features"]
        for subset_number, members in enumerate(_subset_indices(extract, divide_num, seed)):
            k_min, k_max = msm_rank_window(members.size, topmin_min, topmin_max)
            blocks = [members[a:b] for a, b in image_blocks(members.size, block_size)]
            pairs = list(tile_pairs(len(blocks)))
            started = time.perf_counter()
            for done, (first, second) in enumerate(pairs, start=1):
                name = f"tile_b{block_size}_s{subset_number}_{first:04d}_{second:04d}"
                if store.read_part(path, name) is not None:
                    continue
                block_a, block_b = _load_block(features, blocks[first]), _load_block(features, blocks[second])
                votes = [tile_minima(block_a[l], block_b[l], same_block=first == second) for l in range(n_layers)]
                store.write_part(path, name, {"a_votes": torch.stack([v[0] for v in votes]).numpy(),
                                              "b_votes": torch.stack([v[1] for v in votes]).numpy()})
                fault_point("score", done)
                elapsed = time.perf_counter() - started
                log.info(f"score: subset {subset_number + 1}, tile {done}/{len(pairs)} ({elapsed:.1f}s)")
            for first, block in enumerate(blocks):
                row = []
                for second in range(len(blocks)):
                    if first <= second:
                        row.append(store.read_part(path, f"tile_b{block_size}_s{subset_number}_{first:04d}_{second:04d}")["a_votes"])
                    else:
                        row.append(store.read_part(path, f"tile_b{block_size}_s{subset_number}_{second:04d}_{first:04d}")["b_votes"])
                votes = torch.from_numpy(np.concatenate(row, axis=2))  # (layers, A, n_subset, L)
                for layer in range(n_layers):
                    scores[layer, block] = reduce_votes(votes[layer], k_min, k_max).numpy()
    store.write_artifact(path, "score",
                         {"topmin_min": topmin_min, "topmin_max": topmin_max, "divide_num": divide_num, "seed": seed},
                         {"aggregate": aggregate["digest"], "extract": extract["digest"]},
                         {"scores": scores}, code_version=code_version("score"))
    store.clear_parts(path)


@stage_task("score", plan_score)
def score_task(aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float, divide_num: int, seed: int,
               block_size: int) -> Ref:
    path = plan_score(aggregate, extract, topmin_min, topmin_max, divide_num, seed, block_size)
    return ensure_artifact("score", path, lambda p: build_score(p, aggregate, extract, topmin_min, topmin_max,
                                                                 divide_num, seed, block_size))
