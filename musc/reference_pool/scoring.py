"""Scoring against a pool, tile by tile (docs/METHOD.md section 4), and the pool's own decision rule.

The votes are computed with the batch's own functions (``musc.method.msm``: ``tile_minima``,
``msm_rank_window``, ``reduce_votes``; ``musc.method.maps.anomaly_maps``), with the batch's
settings (topmin window, aligned radius, precision). Two kinds of set:

* the pool itself, scored mutually (``mutual_votes``): each pool image against the other P - 1,
  its leave-one-out score, the calibration of the decision threshold;
* a new part against the pool only (``pool_votes``, ``pool_patch_scores``): its votes against the
  P pool images, averaged over the rank window of a set of P + 1 images (the part and the pool), so
  it gets exactly the score it would have in one batch made of the pool and itself. The other new
  parts of the call never vote: a part's score, map and decision do not depend on which parts
  arrived with it, and a defect shared by many parts of one day cannot hide behind its siblings.

Memory is bounded whatever the pool size: the pool is never loaded whole. Per degree and layer,
blocks of ``block_size`` pool images are read from the HDF5 file as they are scored, one per core
at a time (``musc.method.threads``: each block's products on one thread); what is held is the new
images' features of that layer, a pool block and a tile per core, and the votes of the new images
(M x P x L float32: 9 MB for 8 new images against 200 at L = 1369).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..inputs.config import ScoreSettings
from ..method.tiling import ImageTiling
from ..method.maps import anomaly_maps, combine_patch_scores
from ..method.msm import (block_row, image_blocks, msm_rank_window, reduce_votes, set_tiles, tile_bytes,
                          tile_minima)
from ..method.threads import parallel_map

# read(start, stop) -> (stop - start, L, C) float32 features of one layer and degree
BlockReader = Callable[[int, int], torch.Tensor]
IMAGES_PER_MAP_CHUNK = 32


def in_memory(features: torch.Tensor) -> BlockReader:
    return lambda start, stop: features[start:stop].float()


def contiguous_runs(rows: Sequence[int]) -> list[slice]:
    """Increasing ``rows`` as slices of consecutive rows: HDF5 reads each as one plain slice (a
    strided or indexed selection costs h5py some 20 times more than reading its rows one by one)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not rows.size:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [slice(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks)]


def read_rows(read_slice: Callable[[slice], np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """The rows (increasing) of a stored array, read a run of consecutive rows at a time."""
    return np.concatenate([read_slice(run) for run in contiguous_runs(rows)])


def rows_reader(read_slice: Callable[[slice], np.ndarray], rows: Sequence[int] | None = None) -> BlockReader:
    """A block reader over ``rows`` (increasing; None: every row) of a stored feature array, read
    by ``read_slice(slice) -> (n, L, C)``: block (start, stop) is ``rows[start:stop]``."""
    if rows is None:
        return lambda start, stop: torch.from_numpy(read_slice(slice(start, stop)))
    rows = np.asarray(rows, dtype=np.int64)
    return lambda start, stop: torch.from_numpy(read_rows(read_slice, rows[start:stop]))


def mutual_votes(query: BlockReader, n_query: int, others: BlockReader, n_others: int, settings: ScoreSettings
                 ) -> torch.Tensor:
    """Votes (n_query, n_others + n_query, L) of the query images against every ``others`` image and
    against each other (an image's vote against itself is +inf): the query images' tiles among
    themselves assembled by the batch's vote engine (``block_row``). ``others`` are read block by block."""
    options = {"radius": settings.aligned_radius, "precision": settings.msm_precision}
    tiles = set_tiles([range(n_query)], settings.block_size)
    blocks = [t.images_a for t in tiles if t.same_block]
    against_others = pool_votes(query, n_query, others, n_others, settings) if n_others else None

    def among_tile(t):
        return tile_minima(query(t.images_a[0], t.images_a[-1] + 1), query(t.images_b[0], t.images_b[-1] + 1),
                           same_block=t.same_block, **options)
    patches = query(0, 1).shape[1]
    among = dict(zip([(t.first, t.second) for t in tiles],
                     parallel_map(among_tile, tiles, each_bytes=tile_bytes(settings.block_size, settings.block_size,
                                                                           patches))))
    rows = [torch.cat([*block_row(first, len(blocks), lambda i, j: among[i, j])], dim=1) for first in range(len(blocks))]
    votes = torch.cat(rows).float()
    return votes if against_others is None else torch.cat([against_others, votes], dim=1)


def pool_votes(query: BlockReader, n_query: int, pool: BlockReader, n_pool: int, settings: ScoreSettings,
               query_rows: int | None = None) -> torch.Tensor:
    """Votes (n_query, n_pool, L) of each query image against every pool image, and against nothing
    else: the query images never vote for each other. The pool is read block by block, once; the
    query images are taken ``query_rows`` at a time (default ``block_size``; 1: each row's votes
    computed on their own, so that they cannot depend, even in the last bit, on the rows beside it)."""
    options = {"radius": settings.aligned_radius, "precision": settings.msm_precision}
    query_blocks = [query(a, b) for a, b in image_blocks(n_query, query_rows or settings.block_size)]

    def column(bounds: tuple[int, int]) -> list[torch.Tensor]:  # one pool block against every query block
        block = pool(*bounds)
        return [tile_minima(features, block, **options)[0] for features in query_blocks]
    patches = query_blocks[0].shape[1]
    columns = parallel_map(column, image_blocks(n_pool, settings.block_size),  # blocks read as they are scored
                           each_bytes=tile_bytes(max(map(len, query_blocks)), settings.block_size, patches))
    return torch.cat([torch.cat([column[index] for column in columns], dim=1)
                      for index in range(len(query_blocks))]).float()


def pool_patch_scores(votes: torch.Tensor, settings: ScoreSettings) -> torch.Tensor:
    """(n, P, L) votes of new parts against a pool of P images -> (n, L) float64: the mean of the
    rank window of a set of P + 1 images (the part and the pool), as inside that batch."""
    k_min, k_max = msm_rank_window(votes.shape[1] + 1, settings.topmin_min, settings.topmin_max)
    return reduce_votes(votes, k_min, k_max)


def part_scores(new: torch.Tensor, pool: BlockReader, n_pool: int, settings: ScoreSettings) -> torch.Tensor:
    """MSM patch scores (M, L) of new parts (M, L, C) of one layer and degree, each against the pool
    only. A row's votes are its own rows of one matrix product with the pool block: the same, bit for
    bit, whichever rows share its product (tests/test_per_part.py and tests/test_tiled_pool.py hold
    a part's score alone and with others, in any chunking, exactly equal)."""
    return pool_patch_scores(pool_votes(in_memory(new), new.shape[0], pool, n_pool, settings), settings)


def patch_scores(votes: torch.Tensor, settings: ScoreSettings) -> torch.Tensor:
    """(n, N - 1 + ..., L) votes of images in a set of N = votes.shape[1] images -> (n, L) float64."""
    k_min, k_max = msm_rank_window(votes.shape[1], settings.topmin_min, settings.topmin_max)
    return reduce_votes(votes, k_min, k_max)


def set_scores(rows: BlockReader, n_rows: int, window: int, settings: ScoreSettings,
               sources: np.ndarray | None = None) -> torch.Tensor:
    """MSM patch scores (n_rows, L) of the rows of one set scored mutually, each against the others
    (``tiles.tile_sets``: ``window`` is the image count of its rank window). One row per image
    (``sources`` None): the set's votes at once, as a batch. Several rows per image (``sources``: the
    image of each row; tile mixing ``all``): block by block (``own_block_votes``), so at most
    ``block_size`` rows' votes are held."""
    if sources is None:
        return patch_scores(mutual_votes(rows, n_rows, rows, 0, settings), settings)
    k_min, k_max = msm_rank_window(window, settings.topmin_min, settings.topmin_max)
    return torch.cat([reduce_votes(votes, k_min, k_max) for votes in own_block_votes(rows, n_rows, settings, sources)])


def own_block_votes(rows: BlockReader, n_rows: int, settings: ScoreSettings, sources: np.ndarray
                    ) -> Iterator[torch.Tensor]:
    """The votes of a set's rows, ``block_size`` rows at a time, each block against every row of the
    set, the votes against its own image's rows (``sources``: each row's image) left out (+inf)."""
    for start, stop in image_blocks(n_rows, settings.block_size):
        votes = pool_votes(lambda a, b: rows(start + a, start + b), stop - start, rows, n_rows, settings)
        own = torch.from_numpy(sources[start:stop, None] == sources[None, :])
        yield votes.masked_fill(own[:, :, None], float("inf"))


def score_against_pool(new_layers: Sequence[torch.Tensor], pool_layers: Sequence[torch.Tensor],
                       settings: ScoreSettings = ScoreSettings()) -> torch.Tensor:
    """In-memory form: MSM scores (layers, M, L) of new images (M, L, C), each against pool (P, L, C) only."""
    return torch.stack([part_scores(new, in_memory(pool), pool.shape[0], settings)
                        for new, pool in zip(new_layers, pool_layers)])


def part_maps(per_degree: Sequence[torch.Tensor], image_size: int, tiling: ImageTiling | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and image scores (max of the map) from per-degree (layers, rows, L) patch scores:
    (n, S, S) maps untiled; tiled (T rows per image, image-major), each image's tiles stitched at its
    full resolution (n, H, W), as the classify stage does."""
    if tiling is None:
        return anomaly_maps(per_degree, image_size)
    patch_map = combine_patch_scores(per_degree).numpy()
    maps = np.stack([tiling.stitch(patch_map[start:start + tiling.count])
                     for start in range(0, len(patch_map), tiling.count)])
    return maps, maps.reshape(len(maps), -1).max(axis=1)


def image_scores(per_degree: Sequence[torch.Tensor], image_size: int, tiling: ImageTiling | None = None) -> np.ndarray:
    """Image scores (``part_maps``) from per-degree (layers, rows, L) patch scores, a chunk of images
    at a time (the maps of a whole pool are never held)."""
    per_image = 1 if tiling is None else tiling.count
    n_images = per_degree[0].shape[1] // per_image
    scores = np.empty(n_images)
    for start in range(0, n_images, IMAGES_PER_MAP_CHUNK):
        stop = min(start + IMAGES_PER_MAP_CHUNK, n_images)
        scores[start:stop] = part_maps([d[:, start * per_image:stop * per_image] for d in per_degree],
                                       image_size, tiling)[1]
    return scores
