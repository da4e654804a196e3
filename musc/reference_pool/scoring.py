"""Scoring against a pool, tile by tile (docs/METHOD.md section 4), and the pool's own decision rule.

The votes are computed with the batch's own functions (``musc.method.msm``: ``tile_minima``,
``msm_rank_window``, ``reduce_votes``; ``musc.method.maps.anomaly_maps``), so a new image scored
against a pool gets the scores it would have had inside one batch made of the pool and the new
images, with the batch's settings (topmin window, aligned radius, precision).

Memory is bounded whatever the pool size: the pool is never loaded whole. Per degree and layer,
blocks of ``block_size`` pool images are read from the HDF5 file one at a time; what is held is the
new images' features of that layer, one pool block, one tile, and the votes of the new images
(M x (P + M) x L float32: 9 MB for 8 new images against 200 at L = 1369).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..method.maps import anomaly_maps
from ..method.msm import image_blocks, msm_rank_window, reduce_votes, tile_minima, tile_pairs

# read(start, stop) -> (stop - start, L, C) float32 features of one layer and degree
BlockReader = Callable[[int, int], torch.Tensor]
DEFAULT_BLOCK = 8
IMAGES_PER_MAP_CHUNK = 32


@dataclass(frozen=True)
class MsmRule:
    """The scoring settings of the pooled batch: the same ones apply to every new image."""
    topmin_min: float = 0.0
    topmin_max: float = 0.3
    aligned_radius: int | None = None
    msm_precision: str = "fp32"
    block_size: int = DEFAULT_BLOCK


def in_memory(features: torch.Tensor) -> BlockReader:
    return lambda start, stop: features[start:stop].float()


def mutual_votes(query: BlockReader, n_query: int, others: BlockReader, n_others: int, rule: MsmRule
                 ) -> torch.Tensor:
    """Votes (n_query, n_others + n_query, L) of the query images against every ``others`` image and
    against each other (an image's vote against itself is +inf). ``others`` are read block by block."""
    n_patches = query(0, 1).shape[1]
    votes = torch.empty((n_query, n_others + n_query, n_patches), dtype=torch.float32)
    mine = image_blocks(n_query, rule.block_size)
    options = {"radius": rule.aligned_radius, "precision": rule.msm_precision}
    for o0, o1 in image_blocks(n_others, rule.block_size):
        block = others(o0, o1)
        for a0, a1 in mine:
            votes[a0:a1, o0:o1] = tile_minima(query(a0, a1), block, **options)[0]
    for first, second in tile_pairs(len(mine)):
        (a0, a1), (b0, b1) = mine[first], mine[second]
        a_votes, b_votes = tile_minima(query(a0, a1), query(b0, b1), same_block=first == second, **options)
        votes[a0:a1, n_others + b0:n_others + b1] = a_votes
        votes[b0:b1, n_others + a0:n_others + a1] = b_votes
    return votes


def patch_scores(votes: torch.Tensor, rule: MsmRule) -> torch.Tensor:
    """(n, N - 1 + ..., L) votes of images in a set of N = votes.shape[1] images -> (n, L) float64."""
    k_min, k_max = msm_rank_window(votes.shape[1], rule.topmin_min, rule.topmin_max)
    return reduce_votes(votes, k_min, k_max)


def score_against_pool(new_layers: Sequence[torch.Tensor], pool_layers: Sequence[torch.Tensor],
                       topmin_min: float = 0.0, topmin_max: float = 0.3, radius: int | None = None,
                       precision: str = "fp32") -> torch.Tensor:
    """In-memory form: MSM scores (layers, M, L) of new images (M, L, C) against pool (P, L, C) + each other."""
    rule = MsmRule(topmin_min, topmin_max, radius, precision)
    return torch.stack([patch_scores(mutual_votes(in_memory(new), new.shape[0], in_memory(pool), pool.shape[0],
                                                  rule), rule)
                        for new, pool in zip(new_layers, pool_layers)])


def image_scores(per_degree: Sequence[torch.Tensor], image_size: int) -> np.ndarray:
    """Image scores (max of the anomaly map) from per-degree (layers, n, L) patch scores, a chunk
    of images at a time (the maps of a whole pool are never held)."""
    n_images = per_degree[0].shape[1]
    scores = np.empty(n_images)
    for start in range(0, n_images, IMAGES_PER_MAP_CHUNK):
        stop = min(start + IMAGES_PER_MAP_CHUNK, n_images)
        scores[start:stop] = anomaly_maps([d[:, start:stop] for d in per_degree], image_size)[1]
    return scores


# The decision rule ---------------------------------------------------------------------------------

def calibrated_threshold(self_scores, false_alarm_rate: float) -> float:
    """The threshold at which at most ``false_alarm_rate`` of the pool's own (leave-one-out) scores
    would be flagged: with P scores sorted ascending and k = floor(rate * P), just above the
    (k+1)-th largest. A score flags its image when it reaches the threshold (``>=``), so exactly
    the k largest pool scores (fewer with ties) lie at or above it; k = 0 (P < 1/rate) puts it just
    above the pool's largest score."""
    scores = np.sort(np.asarray(self_scores, dtype=np.float64))
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate: must be in [0, 1), got {false_alarm_rate}")
    if scores.size == 0:
        raise ValueError("false_alarm_rate: the pool has no calibration scores (fewer than 2 images); "
                         "give a fixed threshold")
    allowed = math.floor(false_alarm_rate * scores.size)
    return float(np.nextafter(scores[scores.size - 1 - allowed], np.inf))
