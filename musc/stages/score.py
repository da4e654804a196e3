"""Stage 3, score (one per degree r): MSM patch scores of every layer, tile by tile.

Within each subset (divide_num), image blocks (I, J) with I <= J are scored once for both
directions (``musc.method.blocks``). Each tile writes its nearest-patch votes as parts (block I's
against J, used by block row I; J's against I, used by row J: ``half_name``), so a crash loses at
most one tile and finished tiles are never recomputed; tiles can run anywhere (Prefect's tile tasks:
threads, or Dask workers). A block row's votes reduce to each patch's mean of its smallest ones.

* A run whose votes are small enough (``KEPT_VOTES_BYTES``) keeps them: the build reduces the rows
  and writes the votes into the artifact (``votes``), so that a pool made from the run (``musc pool
  add``) reuses the comparisons instead of making them again (musc/reference_pool/votes.py).
* A larger run reduces each block row as soon as its tiles are written (``reduce_row``: the tile
  that completes it does it, once) and removes the votes it used, so the votes on disk are those of
  the rows begun and not yet complete (about a quarter of one degree's when tiles are computed row
  by row, as the flow submits them), not every degree's; the build gathers the rows' scores.

Either way the scores are the same numbers, bit for bit, and a killed run resumes from its parts.
"""
from __future__ import annotations

import logging
import os
import threading
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
KEPT_VOTES_BYTES = 1 << 29  # a degree's votes kept in its artifact up to 512 MiB (N = 362 at L = 256, 4 layers)


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


@dataclass(frozen=True)
class TileLayout:
    """What a plan's tiles make up: every tile, each by (set, first, second), the sets, each set's
    block count, and the shape of the votes its artifact keeps (None: none kept, so each block row
    is reduced as soon as its tiles are done and their votes are removed: ``reduce_row``)."""
    every: tuple[Tile, ...]
    by_position: dict
    sets: tuple
    n_blocks: tuple[int, ...]
    kept: tuple[int, ...] | None
    features: tuple[int, ...]  # the aggregate's (layers, rows, L, C)


_LAYOUTS: dict[tuple, TileLayout] = {}


def tile_layout(plan: Plan) -> TileLayout:
    """The plan's ``TileLayout``, made once per process (the tile tasks' threads share it)."""
    key = (str(plan.path), plan.needs.aggregate["digest"], plan.needs.extract["digest"])
    found = _LAYOUTS.get(key)
    if found is None:
        settings: ScoreSettings = plan.needs.settings
        every = tuple(tiles(plan))
        sets = tuple(scoring_sets(plan.needs.extract, settings))
        features = tuple(store.open_artifact(plan.needs.aggregate["path"], "aggregate",
                                             plan.needs.aggregate["digest"]).shape("features"))
        kept = kept_votes_shape(list(sets), features[0], features[2]) if int(settings.divide_num) == 1 else None  # pools take whole runs
        found = TileLayout(every, {(t.subset, t.first, t.second): t for t in every}, sets,
                           tuple(1 + max(t.second for t in every if t.subset == s) for s in range(len(sets))), kept,
                           features)
        if len(_LAYOUTS) >= 8:  # a run's degrees (their tiles overlap in flight), not every plan ever seen
            _LAYOUTS.clear()
        _LAYOUTS[key] = found
    return found


def tile_work(plan: Plan, tile: Tile) -> float:
    """A tile's arithmetic (FLOP): the products of its blocks' patches, 2 (A L)(B L)(C + 2) per layer
    (a block against itself: each pair once, about half)."""
    n_layers, _, n_patches, channels = tile_layout(plan).features
    pairs = len(tile.images_a) * len(tile.images_b) / (2 if tile.same_block else 1)
    return 2.0 * pairs * n_patches ** 2 * (channels + 2) * n_layers


def half_name(plan: Plan, tile: Tile, side: int) -> str:
    """The part holding a tile's votes of one side: its first block's against the second (side 0),
    used by the first block's row, or the second's against the first (side 1), used by the second's
    row. A run that keeps its votes writes both in one part (``votes_a``, ``votes_b``); a run that
    reduces rows as they finish writes each side as a part of its own (``_a``, ``_b``), removed once
    its row is reduced. A tile of one block against itself has one side."""
    name = tile.part_name(plan.needs.settings.block_size)
    return name if tile_layout(plan).kept is not None else f"{name}_{'ab'[0 if tile.same_block else side]}"


def _field(tile: Tile, side: int) -> str:
    return "votes_a" if tile.same_block or side == 0 else "votes_b"


def row_name(subset: int, first: int) -> str:
    return f"row_s{subset}_{first:04d}"


def row_done(plan: Plan, subset: int, first: int) -> bool:
    return store.valid_digest(store.part_path(plan.path, row_name(subset, first))) is not None


def _half_there(plan: Plan, tile: Tile, side: int) -> bool:
    """A half written completely (its manifest, written last, is there)."""
    return store.manifest_path(store.part_path(plan.path, half_name(plan, tile, side))).exists()


def tile_done(plan: Plan, tile: Tile) -> bool:
    """Both halves written, or used up by their block row's reduction."""
    return all(store.valid_digest(store.part_path(plan.path, half_name(plan, tile, side))) is not None
               or row_done(plan, tile.subset, (tile.first, tile.second)[side])
               for side in ((0,) if tile.same_block else (0, 1)))


def row_tiles(plan: Plan, subset: int, first: int) -> list[tuple[Tile, int]]:
    """The (tile, side) halves block row ``first`` of a set is made of, the last to be computed first
    (tiles are computed row by row)."""
    where = tile_layout(plan)
    return [(where.by_position[subset, first, second], 0) if first <= second
            else (where.by_position[subset, second, first], 1)
            for second in reversed(range(where.n_blocks[subset]))]


def reduce_row(plan: Plan, subset: int, first: int) -> bool:
    """Reduce block row ``first`` of a set as soon as all its halves are there, once (a claim file:
    the first to see it complete does it), and remove the halves it used (no other row uses them):
    the votes on disk stay a fraction of the stage's. True when this call reduced it."""
    if not all(_half_there(plan, tile, side) for tile, side in row_tiles(plan, subset, first)):
        return False
    claim = store.part_path(plan.path, row_name(subset, first)).with_suffix(".claim")
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # reduced, or being reduced (a claim left by a killed process: build does it)
        return False
    store.write_part(plan.path, row_name(subset, first), {"scores": row_scores(plan, subset, first)[0].numpy()})
    fault_point("score_row", lambda: sum(row_done(plan, s, r) for s, n in enumerate(tile_layout(plan).n_blocks)
                                         for r in range(n)))  # a row written, its halves not yet removed
    for tile, side in row_tiles(plan, subset, first):
        store.remove_artifact(store.part_path(plan.path, half_name(plan, tile, side)))
    return True


def row_scores(plan: Plan, subset: int, first: int, keep_votes: bool = False):
    """The scores (layers, A, L) of block row ``first`` of a set, and, with ``keep_votes``, its votes
    (layers, A, set, L) (else None: they are reordered in place to find the scores, the row held once)."""
    from ..method.msm import block_votes, reduce_votes
    settings: ScoreSettings = plan.needs.settings
    where = tile_layout(plan)
    k_min, k_max = msm_rank_window(where.sets[subset][1], settings.topmin_min, settings.topmin_max)

    def votes_of(first: int, second: int) -> "_PartVotes":
        return _PartVotes(plan, where.by_position[subset, first, second])
    row = block_votes(first, where.n_blocks[subset], votes_of, n_images=len(where.sets[subset][0]))
    return reduce_votes(row, k_min, k_max, overwrite=not keep_votes), row if keep_votes else None


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
        if tile_layout(plan).kept is None:  # the rows this tile completes, reduced now, their votes removed
            for first in dict.fromkeys((tile.first, tile.second)):
                reduce_row(plan, tile.subset, first)
    fault_point("score", lambda: sum(tile_done(plan, t) for t in tile_layout(plan).every))  # tiles written (or used up)
    return True


_LAST_BLOCK = threading.local()


def _block_features(plan: Plan, images, keep: bool = False) -> np.ndarray:
    """The aggregate's features (layers, images, L, C) of a block of images, read as one slice when
    the images are consecutive; ``keep``: the block is kept for this thread's next tile, which reads
    it again (a tile task's tiles are one block row: the same first block against each second)."""
    key = (plan.needs.aggregate["path"], plan.needs.aggregate["digest"], tuple(images))
    kept = getattr(_LAST_BLOCK, "block", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    images = np.asarray(images)
    consecutive = images.size and np.array_equal(images, np.arange(images[0], images[0] + images.size))
    with h5py.File(plan.needs.aggregate["path"], "r") as f:
        features = f["features"][:, slice(int(images[0]), int(images[0]) + images.size) if consecutive else images]
    if keep:
        _LAST_BLOCK.block = (key, features)
    return features


def _compute_tile(plan: Plan, tile: Tile) -> None:
    settings: ScoreSettings = plan.needs.settings
    import torch
    from ..inputs.backbones import resolve_device
    target = resolve_device(settings.device)
    block_a = torch.from_numpy(_block_features(plan, tile.images_a, keep=True)).to(target)
    block_b = block_a if tile.same_block else torch.from_numpy(_block_features(plan, tile.images_b)).to(target)
    votes = [tile_minima(block_a[layer], block_b[layer], same_block=tile.same_block, radius=settings.aligned_radius,
                         precision=settings.msm_precision)
             for layer in range(block_a.shape[0])]
    sources = _row_sources(plan)
    if sources is not None:  # a tile's votes against the tiles of its own image: left out (+inf)
        same = torch.from_numpy(sources[np.asarray(tile.images_a)][:, None] == sources[np.asarray(tile.images_b)][None, :])
        same = same.to(target)
        votes = [(a.masked_fill(same[:, :, None], float("inf")), b.masked_fill(same.T[:, :, None], float("inf")))
                 for a, b in votes]
    sides = {side: torch.stack([v[side] for v in votes]).cpu().numpy() for side in ((0,) if tile.same_block else (1, 0))}
    if tile_layout(plan).kept is not None:  # one part
        store.write_part(plan.path, half_name(plan, tile, 0), {_field(tile, side): sides[side] for side in sides})
        return
    for side, values in sides.items():  # side 0 last: its manifest says the tile is written
        store.write_part(plan.path, half_name(plan, tile, side), {_field(tile, side): values})


def build(path: Path, plan: Plan) -> None:
    settings: ScoreSettings = plan.needs.settings
    extract = plan.needs.extract
    where = tile_layout(plan)
    n_layers, n_rows, n_patches, _ = where.features
    scores = np.full((n_layers, n_rows, n_patches), np.nan)
    started = time.perf_counter()
    missing = [t for t in where.every if not tile_done(plan, t)]
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

    def fill(f: h5py.File) -> None:
        votes = None if where.kept is None else f.create_dataset("votes", shape=where.kept, dtype="float32",
                                                                 chunks=(1, 1, 1, *where.kept[3:]))
        for subset in range(len(where.sets)):
            start = 0
            for first in range(where.n_blocks[subset]):
                block = np.asarray(where.by_position[subset, first, first].images_a)
                reduced = store.read_part(path, row_name(subset, first), ("scores",))
                if reduced is not None:  # reduced as its tiles finished
                    scores[:, block] = reduced["scores"]
                else:
                    row_score, row = row_scores(plan, subset, first, keep_votes=votes is not None)
                    scores[:, block] = row_score.numpy()
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
    """A tile's (a_votes, b_votes), each read only when asked for (a block row needs one of them)."""

    def __init__(self, plan: Plan, tile: Tile):
        self.plan, self.tile = plan, tile

    def __getitem__(self, side: int):
        import torch
        name, field = half_name(self.plan, self.tile, side), _field(self.tile, side)
        part = store.read_part(self.plan.path, name, (field,))
        if part is None:
            raise store.ArtifactError(f"{store.part_path(self.plan.path, name)}: a tile part vanished; rerun to redo it")
        return torch.from_numpy(part[field])
