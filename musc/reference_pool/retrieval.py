"""Retrieval for large pools (``pool_top_k``, opt-in; docs/METHOD.md section 4): each part is scored
against only its k nearest pool images by a global embedding, as in one batch made of those k
images and itself (votes from the k images, the rank window of a set of k + 1), the way published
training-free pool methods (anomalib's RAD) retrieve the nearest normal images before matching
patches. k at least the pool's size is the exact scoring.

The embedding needs nothing the pool and a part's features do not already hold: the mean of a
part's L2-normalised LNAMD patch features of the first degree at the deepest chosen layer (over
its tiles too), L2-normalised, compared by cosine. The pool's embeddings are computed once per
opened pool (one feature array of the file read once, ``(layers x degrees)``-th of the pool) and
kept with it; the pool's format does not change.

The calibrated threshold is consistent: the pool's own scores are taken the same way, each pool
image against its k nearest among the other pool images (window of k + 1), computed once per
opened pool and k (``calibration_scores``); k >= P - 1 gives the stored leave-one-out scores.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import torch

from ..method.blocks import tile_sets
from .scoring import image_scores, part_scores

EMBEDDING_DEGREE = 0   # index in r_list: the first degree (1 by default: the tokens themselves, normalised)
EMBEDDING_LAYER = -1   # the deepest chosen layer
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # per opened pool: its embeddings, calibrations


def _kept(pool) -> dict:
    return _KEPT.setdefault(pool, {})


def embedding(rows) -> np.ndarray:
    """A part's global embedding (C,) float64 from its feature rows (T, L, C) of the embedding
    degree and layer: the mean over its tiles and patches, L2-normalised."""
    mean = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1]).mean(axis=0)
    norm = np.linalg.norm(mean)
    return mean / norm if norm > 0 else mean


def embedding_of(features_by_degree, settings) -> np.ndarray:
    """The embedding of a part from its features {r: (layers, T, L, C)}."""
    return embedding(features_by_degree[settings.r_list[EMBEDDING_DEGREE]][EMBEDDING_LAYER])


def pool_embeddings(pool) -> np.ndarray:
    """(P, C) embeddings of the pool's images, computed once per opened pool, a chunk at a time."""
    kept = _kept(pool)
    if "embeddings" not in kept:
        settings = pool.settings
        read = pool.reader(settings.r_list[EMBEDDING_DEGREE], len(settings.layers) + EMBEDDING_LAYER)
        count = settings.tiles_per_image
        cached = np.zeros((len(pool), pool.feature_shape[-1]))
        for start, stop in settings.chunks(len(pool)):
            rows = read(start * count, stop * count).numpy()
            for image in range(start, stop):
                cached[image] = embedding(rows[(image - start) * count:(image - start + 1) * count])
        kept["embeddings"] = cached
    return kept["embeddings"]


def nearest(pool, parts: np.ndarray, k: int | None, exclude: Sequence[int] | None = None) -> list[np.ndarray] | None:
    """The k pool images nearest each part (``parts``: (M, C) embeddings) by cosine, as increasing
    pool indices (ties: the earlier image); ``exclude``: a pool image left out for each part (the
    leave-one-out calibration). None (score against all of them, exactly) when k is None or covers
    every candidate."""
    candidates = len(pool) - (exclude is not None)
    if k is None or k >= candidates:
        return None
    similarity = np.asarray(parts, dtype=np.float64) @ pool_embeddings(pool).T
    if exclude is not None:
        similarity[np.arange(len(similarity)), np.asarray(exclude)] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [np.sort(row) for row in order]


def retrieved_scores(pool, new: torch.Tensor, r: int, layer: int, chosen: Sequence[np.ndarray]) -> torch.Tensor:
    """MSM patch scores (rows, L) of new parts' features (rows, L, C; T rows per part) of one degree
    and layer, part i against the pool images ``chosen[i]`` only (``part_scores``: the window of a
    set of those images and the part), set by set as ``PoolFile.score`` does. Parts that retrieved
    the same images are scored together; each part's products are with its own images only (a
    pool block shared by parts that want different images of it would multiply them all: measured
    slower, docs/PERFORMANCE.md)."""
    settings = pool.settings
    count, mixing = settings.tiles_per_image, settings.score.tile_mixing or "aligned"
    scores = torch.empty(new.shape[:2], dtype=torch.float64)
    groups: dict[tuple[int, ...], list[int]] = {}
    for part, images in enumerate(chosen):
        groups.setdefault(tuple(int(i) for i in images), []).append(part)
    for images, parts in groups.items():
        for (new_rows, _), (pool_rows, _) in zip(tile_sets(parts, count, mixing), tile_sets(images, count, mixing)):
            scores[new_rows] = part_scores(new[new_rows], pool.reader(r, layer, pool_rows), len(pool_rows),
                                           settings.score)
    return scores


def calibration_scores(pool, k: int | None) -> np.ndarray:
    """The pool's own scores that calibrate a threshold for parts scored with ``pool_top_k`` = k:
    each pool image against its k nearest other pool images, as a part would be (computed once per
    opened pool and k: P k image pairs per layer and degree); the stored leave-one-out scores when
    k is None or k >= P - 1 (the same measurement)."""
    cache = _kept(pool).setdefault("calibrations", {})
    if k is None or k >= len(pool) - 1:
        return pool.self_scores
    if k not in cache:
        settings = pool.settings
        count, embeddings = settings.tiles_per_image, pool_embeddings(pool)
        scores = np.empty(len(pool))
        for start, stop in settings.chunks(len(pool)):
            images = np.arange(start, stop)
            chosen = nearest(pool, embeddings[images], k, exclude=images)
            per_degree = [torch.stack([retrieved_scores(pool, pool.reader(r, layer)(start * count, stop * count),
                                                        r, layer, chosen)
                                       for layer in range(len(settings.layers))]) for r in settings.r_list]
            scores[start:stop] = image_scores(per_degree, settings.image_size, settings.tiling)
        cache[k] = scores
    return cache[k]
