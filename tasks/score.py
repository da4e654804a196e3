"""Stage 3, score (one per degree r): MSM patch scores of every layer, tile by tile.

Within each subset (divide_num), image blocks (I, J) with I <= J are scored once for both
directions. Each tile is its own Prefect task (threads by default, Dask workers when the flow is
given a Dask cluster) and writes its nearest-patch votes to its own part file, so a crash loses at
most one tile and finished tiles are never recomputed. The score task then reduces, block by
block, each patch's votes to the mean of its smallest ones; memory stays bounded by the block
size whatever N is, except for the final (layers, N, L) scores.
"""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch
from prefect import task

from musc import store
from musc.backbone import resolve_device
from musc.data import Sample, subsets
from musc.msm import image_blocks, msm_rank_window, reduce_votes, tile_minima, tile_pairs

from .stage import Ref, ensure_artifact, fail_once_point, fault_point, logger, stage_folder, stage_task
from .versions import code_version


def plan_score(aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float, divide_num: int, seed: int,
               block_size: int, device: str = "cpu", radius: int | None = None, precision: str = "fp32") -> Path:
    # block_size, device and precision (bf16 screening is exact) change how the work is done, not the scores
    key = store.stable_hash(code_version("score"), aggregate["digest"], extract["digest"], float(topmin_min),
                            float(topmin_max), int(divide_num), int(seed) if divide_num > 1 else None,
                            *([] if radius is None else [{"aligned_radius": int(radius)}]))
    return stage_folder(aggregate["path"], "score") / f"{key}.h5"


def subset_blocks(extract: Ref, divide_num: int, seed: int, block_size: int) -> list[list[np.ndarray]]:
    """For each subset, its image blocks (sorted original indices)."""
    paths = store.open_artifact(extract["path"], "extract", extract["digest"]).read("paths")
    samples = [Sample(str(p), "", "", None, None) for p in paths]
    result = []
    for members in subsets(samples, int(divide_num), int(seed)):
        members = np.sort(np.asarray(members, dtype=np.int64))
        result.append([members[a:b] for a, b in image_blocks(members.size, int(block_size))])
    return result


def tile_name(block_size: int, subset: int, first: int, second: int) -> str:
    return f"tile_b{block_size}_s{subset}_{first:04d}_{second:04d}"


def compute_tile(path: Path, aggregate: Ref, images_a, images_b, block_size: int, subset: int,
                 first: int, second: int, device: str = "cpu", radius: int | None = None,
                 precision: str = "fp32") -> bool:
    """Votes of one tile, written as a part; False when the part was already there."""
    name = tile_name(block_size, subset, first, second)
    if store.valid_digest(store.part_path(path, name)) is not None:
        return False
    target = resolve_device(device)
    with h5py.File(aggregate["path"], "r") as f:
        block_a = torch.from_numpy(f["features"][:, np.asarray(images_a)]).to(target)
        block_b = block_a if first == second else torch.from_numpy(f["features"][:, np.asarray(images_b)]).to(target)
    votes = [tile_minima(block_a[layer], block_b[layer], same_block=first == second, radius=radius,
                         precision=precision)
             for layer in range(block_a.shape[0])]
    store.write_part(path, name, {"a_votes": torch.stack([v[0] for v in votes]).cpu().numpy(),
                                  "b_votes": torch.stack([v[1] for v in votes]).cpu().numpy()})
    fault_point("score", len(list(store.parts_dir(path).glob("tile_*.json"))))  # manifests: complete parts
    return True


@task(name="score-tile", retries=1)
def score_tile_task(aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float, divide_num: int, seed: int,
                    block_size: int, subset: int, first: int, second: int, images_a: list[int], images_b: list[int],
                    device: str = "cpu", radius: int | None = None, precision: str = "fp32") -> bool:
    path = plan_score(aggregate, extract, topmin_min, topmin_max, divide_num, seed, block_size, device, radius)
    return compute_tile(path, aggregate, images_a, images_b, block_size, subset, first, second, device, radius,
                        precision)


def all_tiles(extract: Ref, divide_num: int, seed: int, block_size: int) -> list[tuple]:
    """Every tile to score: (subset, first block, second block, images of each block)."""
    return [(subset, first, second, blocks[first].tolist(), blocks[second].tolist())
            for subset, blocks in enumerate(subset_blocks(extract, divide_num, seed, block_size))
            for first, second in tile_pairs(len(blocks))]


def build_score(path: Path, aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float,
                divide_num: int, seed: int, block_size: int, device: str = "cpu", radius: int | None = None,
                precision: str = "fp32") -> None:
    log = logger()
    source = store.open_artifact(aggregate["path"], "aggregate", aggregate["digest"])
    n_layers, n_images, n_patches, _ = source.shape("features")
    scores = np.full((n_layers, n_images, n_patches), np.nan)
    for subset, blocks in enumerate(subset_blocks(extract, divide_num, seed, block_size)):
        pairs = list(tile_pairs(len(blocks)))
        started = time.perf_counter()
        for done, (first, second) in enumerate(pairs, start=1):  # tiles that tile tasks did not do
            if compute_tile(path, aggregate, blocks[first], blocks[second], block_size, subset, first, second,
                            device, radius, precision):
                log.info(f"score: subset {subset + 1}, tile {done}/{len(pairs)} ({time.perf_counter() - started:.1f}s)")
        k_min, k_max = msm_rank_window(sum(b.size for b in blocks), topmin_min, topmin_max)
        for first, block in enumerate(blocks):
            row = [store.read_part(path, tile_name(block_size, subset, first, second), ("a_votes",))["a_votes"]
                   if first <= second else
                   store.read_part(path, tile_name(block_size, subset, second, first), ("b_votes",))["b_votes"]
                   for second in range(len(blocks))]
            votes = torch.from_numpy(np.concatenate(row, axis=2))  # (layers, A, n_subset, L)
            for layer in range(n_layers):
                scores[layer, block] = reduce_votes(votes[layer], k_min, k_max).numpy()
    store.write_artifact(path, "score",
                         {"topmin_min": topmin_min, "topmin_max": topmin_max, "divide_num": divide_num, "seed": seed,
                          "aligned_radius": radius, "msm_precision": precision},
                         {"aggregate": aggregate["digest"], "extract": extract["digest"]},
                         {"scores": scores}, code_version=code_version("score"))
    store.clear_parts(path)


@stage_task("score", plan_score)
def score_task(aggregate: Ref, extract: Ref, topmin_min: float, topmin_max: float, divide_num: int, seed: int,
               block_size: int, device: str = "cpu", radius: int | None = None, precision: str = "fp32") -> Ref:
    fail_once_point("score")
    path = plan_score(aggregate, extract, topmin_min, topmin_max, divide_num, seed, block_size, device, radius)
    return ensure_artifact("score", path, lambda p: build_score(p, aggregate, extract, topmin_min, topmin_max,
                                                                 divide_num, seed, block_size, device, radius,
                                                                 precision))
