"""Stage 3, score (one per degree r): MSM patch scores of every layer, tile by tile.

Within each subset (divide_num), image blocks (I, J) with I <= J are scored once for both
directions (``musc.method.blocks``). Each tile writes its nearest-patch votes to a part of its own,
so a crash loses at most one tile and finished tiles are never recomputed; tiles can run anywhere
(Prefect's tile tasks: threads, or Dask workers). The build then reduces, block by block, each
patch's votes to the mean of its smallest ones: it holds one block row of votes at a time, plus
the final (layers, N, L) scores. A run whose votes are small enough (``KEPT_VOTES_BYTES``) keeps
them in the artifact (``votes``), so that a pool made from it (``musc pool add``) reuses the
comparisons instead of making them again (musc/reference_pool/votes.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..inputs.config import ScoreSettings
from ..method.subsets import subsets
from ..method.blocks import Tile, msm_rank_window, set_tiles, tile_sets
from ..progress import TRACKER
from .building import Plan
from .faults import fault_point
from .key import Ref, StageKey

log = logging.getLogger("musc.stages")
KEPT_VOTES_BYTES = 1 << 30  # a degree's votes kept in its artifact up to this size (N = 500 at L = 256, 4 layers)


def plans(run, aggregate: list[Ref], extract: Ref) -> list[Plan]:
    return [plan(degree, extract, run.config.score, r) for r, degree in zip(run.config.r_list, aggregate)]


def plan(aggregate: Ref, extract: Ref, settings: ScoreSettings, r: int) -> Plan:
    key = StageKey("score", settings.recorded(), {"aggregate": aggregate["digest"], "extract": extract["digest"]})
    return Plan(key, str(key.beside(aggregate)), f"score r={int(r)}", Needs(aggregate, extract, settings), build)


@dataclass(frozen=True)
class Needs:
    aggregate: Ref
    extract: Ref
    settings: ScoreSettings


def scoring_sets(extract: Ref, settings: ScoreSettings) -> list[tuple[list[int], int]]:
    """The sets scored mutually, each as (its members: rows of the extracted tokens, the image count
    its rank window is taken from): per subset (divide_num), the sets of ``tiles.tile_sets`` (the
    images untiled; per tile position, or all tiles, when tiled)."""
    artifact = store.open_artifact(extract["path"], "extract", extract["digest"])
    image_sets = subsets([str(g) for g in artifact.read("defect_types")], int(settings.divide_num), int(settings.seed))
    grid = artifact.config.get("tiles")
    count = 1 if grid is None else int(grid[0]) * int(grid[1])
    return [found for members in image_sets for found in tile_sets(members, count, settings.tile_mixing or "aligned")]


def subset_members(extract: Ref, settings: ScoreSettings) -> list[list[int]]:
    """The members (rows of the extracted tokens: images, or tiles when tiled) of each scored set."""
    return [members for members, _ in scoring_sets(extract, settings)]


def tiles(plan: Plan) -> list[Tile]:
    """Every tile of the plan's images."""
    settings: ScoreSettings = plan.needs.settings
    return set_tiles(subset_members(plan.needs.extract, settings), int(settings.block_size))


def _row_sources(plan: Plan):
    """The source image of each token row when votes between tiles of one image are left out
    (tile mixing ``all``), else None."""
    if plan.needs.settings.tile_mixing != "all":
        return None
    extract = plan.needs.extract
    artifact = store.open_artifact(extract["path"], "extract", extract["digest"])
    return artifact.read("tile_source") if artifact.config.get("tiles") is not None else None


def tile_done(plan: Plan, tile: Tile) -> bool:
    return store.valid_digest(store.part_path(plan.path, tile.part_name(plan.needs.settings.block_size))) is not None


def tile_minima(*args, **kwargs):
    """musc.method.msm.tile_minima, imported when a tile is computed (torch): a cached run never is."""
    from ..method.msm import tile_minima as minima
    return minima(*args, **kwargs)


def compute_tile(plan: Plan, tile: Tile) -> bool:
    """Votes of one tile, written as a part; False when the part was already there. Its products
    run on the calling thread alone: tiles are the parallelism (Prefect's task threads, Dask
    workers, ``build``'s own threads), never two OpenMP threads waiting for each other
    (``musc.method.threads``)."""
    if tile_done(plan, tile):
        return False
    from ..method.threads import one_thread
    with one_thread():
        _compute_tile(plan, tile)
    fault_point("score", lambda: len(list(store.parts_dir(plan.path).glob("tile_*.json"))))  # manifests: complete parts
    return True


def _compute_tile(plan: Plan, tile: Tile) -> None:
    settings: ScoreSettings = plan.needs.settings
    import torch
    from ..inputs.backbones import resolve_device
    target = resolve_device(settings.device)
    with h5py.File(plan.needs.aggregate["path"], "r") as f:
        block_a = torch.from_numpy(f["features"][:, np.asarray(tile.images_a)]).to(target)
        block_b = block_a if tile.same_block else torch.from_numpy(f["features"][:, np.asarray(tile.images_b)]).to(target)
    votes = [tile_minima(block_a[layer], block_b[layer], same_block=tile.same_block, radius=settings.aligned_radius,
                         precision=settings.msm_precision)
             for layer in range(block_a.shape[0])]
    sources = _row_sources(plan)
    if sources is not None:  # a tile's votes against the tiles of its own image: left out (+inf)
        same = torch.from_numpy(sources[np.asarray(tile.images_a)][:, None] == sources[np.asarray(tile.images_b)][None, :])
        same = same.to(target)
        votes = [(a.masked_fill(same[:, :, None], float("inf")), b.masked_fill(same.T[:, :, None], float("inf")))
                 for a, b in votes]
    store.write_part(plan.path, tile.part_name(settings.block_size),
                     {"a_votes": torch.stack([v[0] for v in votes]).cpu().numpy(),
                      "b_votes": torch.stack([v[1] for v in votes]).cpu().numpy()})


def build(path: Path, plan: Plan) -> None:
    settings: ScoreSettings = plan.needs.settings
    aggregate, extract = plan.needs.aggregate, plan.needs.extract
    n_layers, n_images, n_patches, _ = store.open_artifact(aggregate["path"], "aggregate",
                                                           aggregate["digest"]).shape("features")
    scores = np.full((n_layers, n_images, n_patches), np.nan)
    every = tiles(plan)
    started = time.perf_counter()
    missing = [t for t in every if not tile_done(plan, t)]
    if missing:  # the tiles that tile tasks did not do (this stage built alone, or a tile lost meanwhile)
        config = store.open_artifact(extract["path"], "extract", extract["digest"]).config
        opened = TRACKER.find(config["category"], "score") is None  # else the flow's job: it closes it
        job = TRACKER.job(config["category"], "score", len(missing), "tiles", config["dataset"])
        from ..method.msm import tile_bytes
        from ..method.threads import parallel_map
        done = iter(range(1, len(missing) + 1))

        def one(tile: Tile) -> None:  # on one of the usable cores
            compute_tile(plan, tile)
            job.advance()
            log.info(f"{plan.label}: tile {next(done)}/{len(missing)} ({time.perf_counter() - started:.1f}s)")
        size = int(settings.block_size)
        parallel_map(one, missing, each_bytes=tile_bytes(size, size, n_patches))
        if opened:
            job.finish()
    by_position = {(t.subset, t.first, t.second): t for t in every}
    sets = scoring_sets(extract, settings)
    kept = kept_votes_shape(sets, n_layers, n_patches) if int(settings.divide_num) == 1 else None  # pools take whole runs

    def fill(f: h5py.File) -> None:
        from ..method.msm import block_votes, reduce_votes
        votes = None if kept is None else f.create_dataset("votes", shape=kept, dtype="float32",
                                                           chunks=(1, 1, 1, *kept[3:]))
        for subset, (members, window) in enumerate(sets):
            k_min, k_max = msm_rank_window(window, settings.topmin_min, settings.topmin_max)
            n_blocks = 1 + max(t.second for t in every if t.subset == subset)

            def votes_of(first: int, second: int, subset: int = subset) -> "_PartVotes":
                return _PartVotes(path, by_position[subset, first, second].part_name(settings.block_size))

            start = 0
            for first in range(n_blocks):
                block = np.asarray(by_position[subset, first, first].images_a)
                row = block_votes(first, n_blocks, votes_of)  # (layers, A, set, L)
                scores[:, block] = reduce_votes(row, k_min, k_max).numpy()
                if votes is not None:
                    votes[:, subset, start:start + len(block)] = row.numpy()
                start += len(block)
        f.create_dataset("scores", data=scores)
    store.write_artifact(path, "score", plan.key.config, plan.key.inputs, {}, fill=fill,
                         attrs={"msm_precision": settings.msm_precision},
                         code_version=plan.key.code_version)
    store.clear_parts(path)


def kept_votes_shape(sets: list[tuple[list[int], int]], n_layers: int, n_patches: int) -> tuple[int, ...] | None:
    """The shape (layers, sets, n, n, L) of the votes a score artifact keeps (sets of n rows each:
    the images, or per tile position, or every tile), None when they would take more than
    ``KEPT_VOTES_BYTES``."""
    sizes = {len(members) for members, _ in sets}
    if len(sizes) != 1:
        return None
    n = sizes.pop()
    shape = (n_layers, len(sets), n, n, n_patches)
    return shape if 4 * int(np.prod(shape, dtype=np.int64)) <= KEPT_VOTES_BYTES else None


class _PartVotes:
    """A tile part's (a_votes, b_votes), each read only when asked for (a block row needs one of them)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name

    def __getitem__(self, which: int):
        import torch
        field = ("a_votes", "b_votes")[which]
        part = store.read_part(self.path, self.name, (field,))
        if part is None:
            raise store.ArtifactError(f"{store.part_path(self.path, self.name)}: a tile part vanished; rerun to redo it")
        return torch.from_numpy(part[field])
