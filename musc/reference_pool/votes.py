"""What a pool keeps to grow at the cost of its own new work: the votes among its images.

A pool's calibration (``pool.leave_one_out_scores``) scores every pool image against the rest of
the pool, set by set: each row's votes (its nearest-patch distance to every other row of its set)
reduced to the mean of the set's rank window. Those votes are kept beside the pool (stage
``pool_votes``: ``<pool>.votes.h5``, one dataset per degree, (layers, S, n, n, L)), recorded with the
pool's settings and its images' digests in order, so that the next change computes only what is
new:

* images from a scored run bring the votes the run's score stage made among them (its artifact's
  ``votes``, kept for runs small enough: ``musc.stages.score.KEPT_VOTES_BYTES``);
* the pool's images bring theirs (the votes file, when it describes exactly this pool);
* only the votes between images of different sources (a day's parts against the pool, a run's
  images against an earlier pool) and among images without kept votes are computed, with the
  batch's own tile functions;
* the size bound and a removal drop rows and columns.

Scores and thresholds are those of computing every vote anew (tests/test_pool_growth.py). When
one set's votes of one layer (held in memory while assembled) would exceed ``SET_VOTES_BYTES``
(very large pools, tiled pools with tile mixing ``all``), the pool is calibrated without them, as
before, and no votes file is kept.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch

from ..inputs.config import ScoreSettings
from ..method.blocks import image_blocks, msm_rank_window, tile_sets
from ..method.msm import reduce_votes, tile_bytes, tile_minima
from ..method.threads import parallel_map
from ..store import ArtifactError, open_artifact, write_artifact
from ..store.schema import stage_schema
from .scoring import BlockReader, contiguous_runs, image_scores, mutual_votes, own_block_votes

# votes(r, layer, set, images) -> (n, n, L) float32: the votes among those images' rows in that set
# (images: indices into their group, increasing), or None when they were not kept
VotesReader = Callable[[int, int, int, np.ndarray], "np.ndarray | None"]
SET_VOTES_BYTES = 1 << 29  # a pool keeps its votes when one set's of one layer fit this (P = 724 at L = 256, 313 at 1369)


def votes_path(pool_path: str | Path) -> Path:
    """Where a pool's votes are kept: ``<pool>.votes.h5`` beside it."""
    pool_path = Path(pool_path)
    return pool_path.with_name(f"{pool_path.stem}.votes.h5")


def set_rows(settings, images: np.ndarray, set_index: int) -> np.ndarray:
    """The feature rows (increasing) of ``images`` (indices into their group) in one of the sets
    they are scored in (``PoolSettings.sets``)."""
    return np.asarray(tile_sets(np.asarray(images, dtype=np.int64), settings.tiles_per_image,
                                settings.score.tile_mixing or "aligned")[set_index][0], dtype=np.int64)


def set_positions(settings, images: np.ndarray, set_index: int, group_size: int) -> np.ndarray:
    """Where the rows of ``images`` lie within that set of the whole group (``group_size`` images)."""
    every = set_rows(settings, np.arange(group_size), set_index)
    return np.searchsorted(every, set_rows(settings, images, set_index))


def stored_votes(read_rows: Callable[[slice], np.ndarray], positions: np.ndarray) -> np.ndarray:
    """The votes among ``positions`` (increasing) of a stored (n, n, L) matrix read a run of rows at
    a time (``read_rows(slice) -> (k, n, L)``): (len, len, L)."""
    runs = contiguous_runs(positions)
    if len(runs) == 1:  # consecutive rows: their columns are the same slice (no copy)
        return read_rows(runs[0])[:, runs[0]]
    return np.concatenate([read_rows(run)[:, positions] for run in runs])


def run_votes(score_paths: dict[int, Path], settings, n_run: int, chosen: np.ndarray) -> VotesReader | None:
    """The votes a scored run's score artifacts kept (``votes``), among its ``chosen`` images (as the
    pool's ``Images`` number them: 0 .. len(chosen) - 1), or None when one degree kept none."""
    for path in score_paths.values():
        with h5py.File(path, "r") as f:
            if "votes" not in f:
                return None

    def read(r: int, layer: int, set_index: int, images: np.ndarray) -> np.ndarray:
        artifact = open_artifact(score_paths[r], "score")
        positions = set_positions(settings, chosen[np.asarray(images)], set_index, n_run)
        return stored_votes(lambda rows: artifact.read("votes", (layer, set_index, rows)), positions)
    return read


def kept_votes(pool) -> VotesReader | None:
    """The votes kept beside ``pool`` (a ``PoolFile``) as a reader over its images, or None when there
    are none, or they describe another pool (other images, order or settings: a copy, a crash
    between the two writes)."""
    path = votes_path(pool.path.resolve())
    if not path.is_file():
        return None
    try:
        artifact = open_artifact(path, "pool_votes")
        digests = [v.decode() if isinstance(v, bytes) else str(v) for v in artifact.read("digests")]
    except (ArtifactError, OSError, KeyError, ValueError):
        return None
    if digests != list(pool.digests) or artifact.config.get("settings") != pool.settings.to_config():
        return None
    n_pool = len(pool)

    def read(r: int, layer: int, set_index: int, images: np.ndarray) -> np.ndarray:
        kept = open_artifact(path, "pool_votes")  # verified once per process while the file stays the same
        positions = set_positions(pool.settings, np.asarray(images), set_index, n_pool)
        return stored_votes(lambda rows: kept.read(f"votes_r{r}", (layer, set_index, rows)), positions)
    return read


def _reader(read: Callable[[int, int, np.ndarray], np.ndarray], r: int, layer: int, rows: np.ndarray,
            count: int) -> BlockReader:
    """A block reader over feature ``rows`` (increasing) of a group of images (``read(r, layer,
    images)``: all their rows, image-major, ``count`` per image)."""
    def block(start: int, stop: int) -> torch.Tensor:
        wanted = rows[start:stop]
        images = np.unique(wanted // count)
        features = read(r, layer, images)
        local = np.searchsorted(images, wanted // count) * count + wanted % count
        return torch.from_numpy(np.ascontiguousarray(features[local]))
    return block


def cross_votes(a: BlockReader, n_a: int, b: BlockReader, n_b: int, settings: ScoreSettings
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes of rows A against rows B (n_a, n_b, L) and of B against A (n_b, n_a, L): one product per
    pair of blocks gives both (``tile_minima``). A is held whole (the new images, usually the few);
    B is read a block at a time, each block on one core."""
    options = {"radius": settings.aligned_radius, "precision": settings.msm_precision}
    a_blocks = [a(start, stop) for start, stop in image_blocks(n_a, settings.block_size)]

    def column(bounds: tuple[int, int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        block = b(*bounds)
        pairs = [tile_minima(features, block, **options) for features in a_blocks]
        return [forward for forward, _ in pairs], [backward for _, backward in pairs]
    patches = a_blocks[0].shape[1]
    columns = parallel_map(column, image_blocks(n_b, settings.block_size),
                           each_bytes=tile_bytes(settings.block_size, settings.block_size, patches))
    forward = torch.cat([torch.cat([c[0][i] for c in columns], dim=1) for i in range(len(a_blocks))])
    backward = torch.cat([torch.cat(c[1], dim=1) for c in columns])
    return forward.float(), backward.float()


def own_votes(rows: BlockReader, n_rows: int, settings: ScoreSettings, sources: np.ndarray | None) -> torch.Tensor:
    """The votes (n, n, L) among rows of one set computed anew, as the calibration without kept
    votes does (``scoring.set_scores``): +inf against itself, and, with ``sources`` (each row's
    image, tile mixing ``all``), against its own image's rows."""
    if sources is None:
        return mutual_votes(rows, n_rows, rows, 0, settings)
    return torch.cat(list(own_block_votes(rows, n_rows, settings, sources)))


@dataclass
class Group:
    """Images joining the pool from one source: their reader (``Images``) and which of them join."""
    read: Callable[[int, int, np.ndarray], np.ndarray]
    votes: VotesReader | None
    chosen: np.ndarray


def grown_calibration(settings, groups: Sequence[Group], n_patches: int, path: str | Path, digests: Sequence[str],
                      progress: Callable[[str], None] | None = None) -> np.ndarray:
    """The leave-one-out scores of the pool made of ``groups`` in order (``leave_one_out_scores``'
    numbers), from the votes each group kept and the votes computed between groups; the pool's
    votes are written to ``path`` (stage ``pool_votes``, with the pool's settings and ``digests``)."""
    score = settings.score
    count = settings.tiles_per_image
    n_images = sum(len(g.chosen) for g in groups)
    several = count > 1 and score.tile_mixing == "all"
    sets = settings.sets(n_images)
    per_degree: dict[int, torch.Tensor] = {}

    def fill(f: h5py.File) -> None:
        side = n_images * count if several else n_images
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="musc-votes") as writer:
            written = writer.submit(lambda: None)  # a set's votes are written while the next are made
            for r in settings.r_list:
                target = f.create_dataset(f"votes_r{r}", shape=(len(settings.layers), len(sets), side, side, n_patches),
                                          dtype="float32", chunks=(1, 1, 1, side, n_patches))
                layers = []
                for layer in range(len(settings.layers)):
                    scores = torch.empty((n_images * count, n_patches), dtype=torch.float64)
                    for set_index, (rows, window) in enumerate(sets):
                        votes = _set_votes(settings, groups, r, layer, set_index, n_patches, several)
                        written.result()
                        written = writer.submit(target.__setitem__, (layer, set_index), votes.numpy())
                        k_min, k_max = msm_rank_window(window, score.topmin_min, score.topmin_max)
                        scores[rows] = reduce_votes(votes, k_min, k_max)
                    layers.append(scores)
                    if progress is not None:
                        progress(f"calibration: degree {r}, layer {layer + 1}/{len(settings.layers)}")
                per_degree[r] = torch.stack(layers)
            written.result()
        f.create_dataset("digests", data=np.array(list(digests), dtype=object))

    write_artifact(votes_path(path), "pool_votes", {"settings": settings.to_config()}, {}, {}, fill=fill,
                   code_version=stage_schema("pool_votes").code_version)
    return image_scores([per_degree[r] for r in settings.r_list], settings.image_size, settings.tiling)


def _set_votes(settings, groups: Sequence[Group], r: int, layer: int, set_index: int, n_patches: int,
               several: bool) -> torch.Tensor:
    """The votes (n, n, L) among the rows of one set of the grown pool, group block by group block."""
    count = settings.tiles_per_image
    spans, readers, start = [], [], 0
    for group in groups:
        rows = set_rows(settings, group.chosen, set_index)
        spans.append(slice(start, start + rows.size))
        readers.append(_reader(group.read, r, layer, rows, count))
        start += rows.size
    votes = torch.empty((start, start, n_patches), dtype=torch.float32)
    for p, group in enumerate(groups):
        size = spans[p].stop - spans[p].start
        if not size:
            continue
        kept = group.votes(r, layer, set_index, group.chosen) if group.votes is not None else None
        if kept is not None:
            votes[spans[p], spans[p]] = torch.from_numpy(kept)
        else:
            sources = set_rows(settings, group.chosen, set_index) // count if several else None
            votes[spans[p], spans[p]] = own_votes(readers[p], size, settings.score, sources)
        for q in range(p + 1, len(groups)):
            other = spans[q].stop - spans[q].start
            if other:  # images of two sources: never the same image, no vote left out
                forward, backward = cross_votes(readers[q], other, readers[p], size, settings.score)
                votes[spans[q], spans[p]] = forward
                votes[spans[p], spans[q]] = backward
    return votes


def fits(settings, n_images: int, n_patches: int) -> bool:
    """Whether a pool of ``n_images`` keeps its votes: one set's votes of one layer, held at once while
    they are assembled, fit ``SET_VOTES_BYTES``."""
    rows = len(settings.sets(n_images)[0][0]) if n_images else 0
    return n_images >= 2 and 4 * rows * rows * n_patches <= SET_VOTES_BYTES
