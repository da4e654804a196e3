"""Stage 3, score (one per degree r): MSM patch scores of every layer, tile by tile.

Within each subset (divide_num), image blocks (I, J) with I <= J are scored once for both
directions. Each tile is its own Prefect task (threads by default, Dask workers when the flow is
given a Dask cluster) and writes its nearest-patch votes to its own part file, so a crash loses at
most one tile and finished tiles are never recomputed. The score task then reduces, block by
block, each patch's votes to the mean of its smallest ones: it holds one block row of votes at a
time, plus the final (layers, N, L) scores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from musc import store
from musc.inputs.config import ScoreSettings
from musc.inputs.datasets import Sample, subsets
from musc.method.tiles import image_blocks, msm_rank_window, tile_pairs
from musc.progress import TRACKER

from .faults import fail_once_point, fault_point
from .stage import Plan, Ref, code_version, logger, stage_folder, stage_task


@dataclass(frozen=True)
class Tile:
    """Two image blocks of one subset, scored against each other (first <= second)."""
    subset: int
    first: int
    second: int
    images_a: tuple[int, ...]
    images_b: tuple[int, ...]

    def part_name(self, block_size: int) -> str:
        return tile_part_name(block_size, self.subset, self.first, self.second)


def tile_part_name(block_size: int, subset: int, first: int, second: int) -> str:
    return f"tile_b{block_size}_s{subset}_{first:04d}_{second:04d}"


def plan_score(aggregate: Ref, extract: Ref, settings: ScoreSettings) -> Path:
    key = store.stable_hash(code_version("score"), aggregate["digest"], extract["digest"], *settings.key())
    return stage_folder(aggregate["path"], "score") / f"{key}.h5"


def subset_blocks(extract: Ref, settings: ScoreSettings) -> list[list[np.ndarray]]:
    """For each subset, its image blocks (sorted original indices)."""
    paths = store.open_artifact(extract["path"], "extract", extract["digest"]).read("paths")
    samples = [Sample(str(p), "", "", None, None) for p in paths]
    result = []
    for members in subsets(samples, int(settings.divide_num), int(settings.seed)):
        members = np.sort(np.asarray(members, dtype=np.int64))
        result.append([members[a:b] for a, b in image_blocks(members.size, int(settings.block_size))])
    return result


def all_tiles(extract: Ref, settings: ScoreSettings) -> list[Tile]:
    """Every tile to score."""
    return [Tile(subset, first, second, tuple(blocks[first].tolist()), tuple(blocks[second].tolist()))
            for subset, blocks in enumerate(subset_blocks(extract, settings))
            for first, second in tile_pairs(len(blocks))]


def tile_minima(*args, **kwargs):
    """musc.method.msm.tile_minima, imported when a tile is computed (torch): a cached run never is."""
    from musc.method.msm import tile_minima as minima
    return minima(*args, **kwargs)


def compute_tile(path: Path, aggregate: Ref, tile: Tile, settings: ScoreSettings) -> bool:
    """Votes of one tile, written as a part; False when the part was already there."""
    name = tile.part_name(settings.block_size)
    if store.valid_digest(store.part_path(path, name)) is not None:
        return False
    import torch
    from musc.inputs.backbones import resolve_device
    target = resolve_device(settings.device)
    same = tile.first == tile.second
    with h5py.File(aggregate["path"], "r") as f:
        block_a = torch.from_numpy(f["features"][:, np.asarray(tile.images_a)]).to(target)
        block_b = block_a if same else torch.from_numpy(f["features"][:, np.asarray(tile.images_b)]).to(target)
    votes = [tile_minima(block_a[layer], block_b[layer], same_block=same, radius=settings.aligned_radius,
                         precision=settings.msm_precision)
             for layer in range(block_a.shape[0])]
    store.write_part(path, name, {"a_votes": torch.stack([v[0] for v in votes]).cpu().numpy(),
                                  "b_votes": torch.stack([v[1] for v in votes]).cpu().numpy()})
    fault_point("score", lambda: len(list(store.parts_dir(path).glob("tile_*.json"))))  # manifests: complete parts
    return True


@task(name="score-tile", retries=1, cache_policy=NO_CACHE, persist_result=False)
def score_tile_task(aggregate: Ref, path: str, tile: Tile, settings: ScoreSettings) -> bool:
    return compute_tile(Path(path), aggregate, tile, settings)


def build_score(path: Path, aggregate: Ref, extract: Ref, settings: ScoreSettings) -> None:
    import torch
    from musc.method.msm import reduce_votes
    log = logger()
    source = store.open_artifact(aggregate["path"], "aggregate", aggregate["digest"])
    n_layers, n_images, n_patches, _ = source.shape("features")
    scores = np.full((n_layers, n_images, n_patches), np.nan)
    block_size = settings.block_size
    tiles = all_tiles(extract, settings)
    started = time.perf_counter()
    missing = [t for t in tiles if store.valid_digest(store.part_path(path, t.part_name(block_size))) is None]
    if missing:  # the tiles that tile tasks did not do (score_task alone, or a tile lost meanwhile)
        config = store.open_artifact(extract["path"], "extract", extract["digest"]).config
        opened = TRACKER.find(config["category"], "score") is None  # else the flow's job, it closes it
        job = TRACKER.job(config["category"], "score", len(missing), "tiles", config["dataset"])
        for done, tile in enumerate(missing, start=1):
            compute_tile(path, aggregate, tile, settings)
            job.advance()
            log.info(f"score: tile {done}/{len(missing)} ({time.perf_counter() - started:.1f}s)")
        if opened:
            job.finish()
    for subset, blocks in enumerate(subset_blocks(extract, settings)):
        k_min, k_max = msm_rank_window(sum(b.size for b in blocks), settings.topmin_min, settings.topmin_max)
        for first, block in enumerate(blocks):
            row = [store.read_part(path, tile_part_name(block_size, subset, first, second), ("a_votes",))["a_votes"]
                   if first <= second else
                   store.read_part(path, tile_part_name(block_size, subset, second, first), ("b_votes",))["b_votes"]
                   for second in range(len(blocks))]
            votes = torch.from_numpy(np.concatenate(row, axis=2))  # (layers, A, n_subset, L)
            for layer in range(n_layers):
                scores[layer, block] = reduce_votes(votes[layer], k_min, k_max).numpy()
    store.write_artifact(path, "score", settings.recorded(),
                         {"aggregate": aggregate["digest"], "extract": extract["digest"]},
                         {"scores": scores}, code_version=code_version("score"))
    store.clear_parts(path)


@stage_task("score")
def score_task(aggregate: Ref, extract: Ref, settings: ScoreSettings) -> Plan:
    fail_once_point("score")
    return plan_score(aggregate, extract, settings), lambda p: build_score(p, aggregate, extract, settings)
