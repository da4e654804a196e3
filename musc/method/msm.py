"""MSM: mutual scoring of unlabeled images (docs/METHOD.md section 4).

Every patch p of image i gets one vote per other image j: its nearest Euclidean distance to any
patch of j. Its score is the mean of its smallest votes (ranks ``int((N-1)*topmin_min)`` to
``int((N-1)*topmin_max)``).

The work is done in tiles of image blocks (I, J) with I <= J. One matrix product per tile gives
the squared distances between every patch of block I and every patch of block J, and that one
matrix yields both directions: its row minima are I's votes against J, its column minima J's
votes against I. Memory per tile is ``block_size**2 * L**2`` floats, whatever N is.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np
import torch

from .checks import EXACT_PRECISIONS, PRECISIONS, TOPMIN_MAX, TOPMIN_MIN, check_precision
from .blocks import Tile, block_row, image_blocks, msm_rank_window, set_tiles, tile_pairs


def _augmented(features: torch.Tensor, left: bool) -> torch.Tensor:
    """Rows [-2x, |x|^2, 1] (left) or [y, 1, |y|^2] (right): their product is |x - y|^2."""
    squared_norm = features.pow(2).sum(-1, keepdim=True)
    ones = torch.ones_like(squared_norm)
    if left:
        return torch.cat([-2.0 * features, squared_norm, ones], dim=-1)
    return torch.cat([features, ones, squared_norm], dim=-1)


__all__ = ["EXACT_PRECISIONS", "PRECISIONS", "Tile", "block_row", "block_votes", "check_precision", "image_blocks",
           "msm_rank_window", "mutual_scores", "set_tiles", "tile_bytes", "tile_minima", "tile_pairs"]


def _pair_minima(left: torch.Tensor, right: torch.Tensor, n_a: int, n_b: int, n_patches: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared-distance minima of every patch of A vs each image of B and vice versa."""
    squared = (left @ right.T).view(n_a, n_patches, n_b, n_patches)
    return squared.amin(dim=3).permute(0, 2, 1), squared.amin(dim=1).permute(1, 0, 2)


def _minima_between(block_a: torch.Tensor, block_b: torch.Tensor, precision: str
                    ) -> Callable[[int, int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    """A function (a0, a1, b0, b1) -> squared-distance minima between images [a0, a1) of block A and
    [b0, b1) of block B, both directions: (forward (A', B', L), backward (B', A', L)).

    fp32: one augmented matrix product. bf16: screened in bf16 and recomputed exactly in fp32
    (musc/method/screening.py), on the CPU; a part whose screen leaves too many candidates, a tile on
    another device or one with non-finite features is computed in fp32. bf16-fast: the same augmented
    product with bf16 inputs (fp32 accumulation, bf16 result), no exact refine: not exact.
    """
    n_patches = block_a.shape[1]
    if check_precision(precision) not in EXACT_PRECISIONS:
        return _fast_minima(block_a, block_b)

    @functools.cache
    def augmented():
        return (_augmented(block_a.reshape(-1, block_a.shape[-1]), left=True),
                _augmented(block_b.reshape(-1, block_b.shape[-1]), left=False))

    def exact(a0, a1, b0, b1):
        left, right = augmented()
        return _pair_minima(left[a0 * n_patches:a1 * n_patches], right[b0 * n_patches:b1 * n_patches],
                            a1 - a0, b1 - b0, n_patches)

    if (precision == "fp32" or block_a.device.type != "cpu"
            or not all(torch.isfinite(torch.stack(torch.aminmax(block))).all() for block in (block_a, block_b))):
        return exact
    from .screening import BlockScreen, ScreeningUnavailable, native_bf16
    try:
        screen = BlockScreen(block_a, block_b)
    except ScreeningUnavailable as error:
        warnings.warn(f"{error}; computing in fp32 instead (same scores)", stacklevel=3)
        return exact
    if not native_bf16():
        warnings.warn("msm_precision: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 screening is "
                      "likely slower than fp32; the scores are the same either way", stacklevel=3)

    warned = []

    def screened(a0, a1, b0, b1):
        result = screen.minima(a0, a1, b0, b1)
        if result is None and not warned:
            warned.append(True)  # once per tile; Python shows it once per process
            warnings.warn("msm_precision: bf16 screening found too many near-identical patches (uniform areas) "
                          "and computes such tiles in fp32: the same scores, no faster than msm_precision: fp32",
                          stacklevel=2)
        return result or exact(a0, a1, b0, b1)
    return screened


def _fast_augmented(features: torch.Tensor, left: bool) -> torch.Tensor:
    """bf16 rows whose product (fp32 accumulation) is |x16 - y16|^2 for the bf16-rounded x16, y16:
    [-2 x16, hi, lo, 1, 1] and [y16, 1, 1, hi, lo], where hi + lo carries |x16|^2 (|y16|^2) to about
    2^-16. Using the rounded vectors' own norms keeps near-identical patches near distance 0 (with the
    exact norms, the norm change from rounding, ~2^-9, would swamp their small distances)."""
    rounded = features.bfloat16()
    norm = rounded.float().pow(2).sum(-1, keepdim=True)
    high = norm.bfloat16()
    low = (norm - high.float()).bfloat16()
    ones = torch.ones_like(high)
    if left:
        return torch.cat([-2 * rounded, high, low, ones, ones], dim=-1)
    return torch.cat([rounded, ones, ones, high, low], dim=-1)


def _fast_minima(block_a: torch.Tensor, block_b: torch.Tensor
                 ) -> Callable[[int, int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    """bf16-fast (opt-in, not exact): |x|^2 + |y|^2 - 2 x.y as one bf16 product (fp32 accumulation,
    bf16 result) of the augmented bf16 rows (``_fast_augmented``), no exact refine. What moves a vote:
    rounding the features to bf16 (8 significant bits) and the result (2^-9 of the squared distance).
    Measured deviations are in the README (bf16-fast table)."""
    n_patches = block_a.shape[1]
    left = _fast_augmented(block_a.reshape(-1, block_a.shape[-1]), left=True)
    right = _fast_augmented(block_b.reshape(-1, block_b.shape[-1]), left=False)

    def fast(a0, a1, b0, b1):
        forward, backward = _pair_minima(left[a0 * n_patches:a1 * n_patches], right[b0 * n_patches:b1 * n_patches],
                                         a1 - a0, b1 - b0, n_patches)
        return forward.float(), backward.float()
    return fast


def _fill_diagonal_block(minima, votes, start, stop) -> None:
    """Votes among images [start, stop) of one block, each pair once: split the block in halves,
    score the two halves against each other as one rectangle, recurse into each half."""
    if stop - start < 2:
        return
    middle = (start + stop) // 2
    forward, backward = minima(start, middle, middle, stop)
    votes[start:middle, middle:stop] = forward
    votes[middle:stop, start:middle] = backward
    _fill_diagonal_block(minima, votes, start, middle)
    _fill_diagonal_block(minima, votes, middle, stop)


def tile_minima(block_a: torch.Tensor, block_b: torch.Tensor, same_block: bool = False, radius: int | None = None,
                precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-patch distances between two image blocks, both directions.

    block_a: (A, L, C), block_b: (B, L, C), float32. Returns (a_votes (A, B, L), b_votes (B, A, L)):
    a_votes[i, j, p] = min_q |a_i[p] - b_j[q]|. With ``same_block`` the two blocks are the same
    images: each pair is then computed once (halves against each other, recursively), and an image's
    votes against itself are +inf. ``precision``: "fp32", "bf16" (screened, same result) or
    "bf16-fast" (bf16 products, not exact).
    """
    n_a, n_patches, _ = block_a.shape
    n_b = block_b.shape[0]
    if radius is not None:
        a_votes = aligned_minima(block_a, block_b, radius)
        if not same_block:
            return a_votes, aligned_minima(block_b, block_a, radius)
        a_votes = a_votes.masked_fill(torch.eye(n_a, dtype=torch.bool, device=a_votes.device)[:, :, None], float("inf"))
        return a_votes, a_votes
    minima = _minima_between(block_a, block_b, precision)
    if not same_block:
        a_votes, b_votes = minima(0, n_a, 0, n_b)
    else:
        a_votes = torch.full((n_a, n_a, n_patches), float("inf"), dtype=block_a.dtype, device=block_a.device)
        _fill_diagonal_block(minima, a_votes, 0, n_a)
        b_votes = a_votes
    a_votes = a_votes.clamp_min(0).sqrt_()
    b_votes = a_votes if same_block else b_votes.clamp_min(0).sqrt_()
    return a_votes.contiguous(), b_votes.contiguous()


def tile_bytes(images_a: int, images_b: int, patches: int) -> int:
    """What computing one tile holds at its peak: the fp32 squared distances between every patch of
    ``images_a`` and of ``images_b`` images, twice (the product and its minima's working copy)."""
    return 2 * 4 * images_a * patches * images_b * patches


def aligned_minima(block_a: torch.Tensor, block_b: torch.Tensor, radius: int) -> torch.Tensor:
    """Same-position votes for aligned parts: a_votes[i, j, p] = min |a_i[p] - b_j[q]| over the
    patches q of b_j within ``radius`` grid steps of p (rows and columns). (A, B, L)."""
    n_a, n_patches, channels = block_a.shape
    n_b = block_b.shape[0]
    side = math.isqrt(n_patches)
    grid_b = block_b.reshape(n_b, side, side, channels)
    norms_a = block_a.pow(2).sum(-1)  # (A, L)
    norms_b = grid_b.pow(2).sum(-1)   # (B, side, side)
    rows = torch.arange(side, device=block_a.device)
    best = torch.full((n_a, n_b, n_patches), float("inf"), dtype=block_a.dtype, device=block_a.device)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = torch.roll(grid_b, shifts=(-dy, -dx), dims=(1, 2)).reshape(n_b, n_patches, channels)
            shifted_norms = torch.roll(norms_b, shifts=(-dy, -dx), dims=(1, 2)).reshape(n_b, n_patches)
            valid = ((rows + dy >= 0) & (rows + dy < side))[:, None] & ((rows + dx >= 0) & (rows + dx < side))[None, :]
            squared = (norms_a[:, None, :] + shifted_norms[None, :, :]
                       - 2 * torch.einsum("apc,bpc->abp", block_a, shifted))
            squared = squared.masked_fill(~valid.reshape(1, 1, n_patches), float("inf"))
            best = torch.minimum(best, squared)
    return best.clamp_min(0).sqrt()


def reduce_votes(votes: torch.Tensor, k_min: int, k_max: int, overwrite: bool = False) -> torch.Tensor:
    """(..., A, N, L) votes (self-votes +inf) -> (..., A, L) float64: mean of ranks [k_min, k_max)
    along the image axis. On the CPU the window is found by partial sorts (``np.partition``: the
    votes of ranks k_min .. k_max - 1, in no order) and summed in float64, where sums of float32
    votes are exact, so the order does not matter: the topk's mean, about twice as fast.
    ``overwrite``: the votes are reordered in place instead of copied (the same result; for a
    caller that has no further use for them: a block row's votes are 32 KB per image at the demo grid)."""
    if votes.device.type != "cpu":
        smallest = torch.topk(votes, k_max, dim=-2, largest=False, sorted=True).values
        return smallest[..., k_min:k_max, :].double().mean(dim=-2)
    kth = (k_min, k_max - 1) if k_min else k_max - 1
    array = votes.numpy()
    if overwrite:
        array.partition(kth, axis=-2)  # what np.partition does to its copy
    else:
        array = np.partition(array, kth, axis=-2)
    return torch.from_numpy(array[..., k_min:k_max, :].sum(axis=-2, dtype=np.float64) / (k_max - k_min))


def block_votes(first: int, n_blocks: int, votes_of: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
                n_images: int | None = None) -> torch.Tensor:
    """The votes (..., A, N, L) of the images of block ``first`` against the whole set: its row of
    tile votes (``block_row``), joined along the image axis; ``reduce_votes`` makes them scores.
    ``n_images``: the set's size N, when known: each tile's votes are copied into the row as they are
    read, so the row is held once, not twice (its pieces and their join)."""
    pieces = block_row(first, n_blocks, votes_of)
    if n_images is None:
        return torch.cat(list(pieces), dim=-2)
    row, start = None, 0
    for piece in pieces:
        if row is None:
            row = torch.empty((*piece.shape[:-2], int(n_images), piece.shape[-1]), dtype=piece.dtype, device=piece.device)
        if piece.shape[:-2] != row.shape[:-2] or piece.shape[-1] != row.shape[-1]:
            raise ValueError(f"votes_of: a tile's votes of shape {tuple(piece.shape)} do not join a row of {tuple(row.shape)}")
        row[..., start:start + piece.shape[-2], :] = piece
        start += piece.shape[-2]
    if start != n_images:
        raise ValueError(f"n_images: the row's tiles hold {start} images, not {n_images}")
    return row


def mutual_scores(Z, topmin_min: float = TOPMIN_MIN, topmin_max: float = TOPMIN_MAX, block_size: int | None = None,
                  progress: Callable[[int, int], None] | None = None, radius: int | None = None,
                  precision: str = "fp32") -> torch.Tensor:
    """MSM patch scores of one layer and degree: Z (N, L, C) L2-normalised -> (N, L) float64.

    ``block_size`` (images per tile side) bounds the tile memory; the scores do not depend on it.
    ``progress(done, total)`` is called after each tile. ``radius``: aligned-parts option, compare
    each patch only with patches within that many grid steps of its position (None: all patches,
    as the paper). ``precision``: "fp32", or "bf16" to screen in bf16 and recompute the nearest
    candidates in fp32 (the same scores, faster on CPUs with AVX512-BF16 or AMX; musc/method/screening.py),
    or "bf16-fast": bf16 products without the exact refine (faster, slightly different scores).
    """
    check_precision(precision)
    Z = torch.as_tensor(Z)
    if Z.ndim != 3:
        raise ValueError(f"Z: expected shape (N, L, C), got {tuple(Z.shape)}")
    Z = Z.float()
    n_images = Z.shape[0]
    k_min, k_max = msm_rank_window(n_images, topmin_min, topmin_max)
    tiles = set_tiles([range(n_images)], block_size or n_images)
    votes = {}
    for done, tile in enumerate(tiles, start=1):
        votes[tile.first, tile.second] = tile_minima(_rows(Z, tile.images_a), _rows(Z, tile.images_b),
                                                     same_block=tile.same_block, radius=radius, precision=precision)
        if progress is not None:
            progress(done, len(tiles))
    n_blocks = max(t.second for t in tiles) + 1
    return torch.cat([reduce_votes(block_votes(first, n_blocks, lambda i, j: votes[i, j]), k_min, k_max)
                      for first in range(n_blocks)])


def _rows(Z: torch.Tensor, images: tuple[int, ...]) -> torch.Tensor:
    """The consecutive images of a block (a view, no copy)."""
    return Z[images[0]:images[-1] + 1]


def reference_mutual_scores(Z, topmin_min: float = TOPMIN_MIN, topmin_max: float = TOPMIN_MAX) -> torch.Tensor:
    """The straightforward per-image formulation of the reference, for benchmarks and tests.

    Each image against all others with ``torch.cdist``: every pair is computed twice and an
    (L, (N-1)L) distance matrix is held per image.
    """
    Z = torch.as_tensor(Z).float()
    n_images, n_patches, _ = Z.shape
    k_min, k_max = msm_rank_window(n_images, topmin_min, topmin_max)
    scores = torch.empty((n_images, n_patches), dtype=torch.float64)
    for i in range(n_images):
        others = torch.cat([Z[:i], Z[i + 1:]]).reshape(-1, Z.shape[-1])
        distances = torch.cdist(Z[i], others).view(n_patches, n_images - 1, n_patches)
        nearest = distances.amin(dim=2)
        ranked = torch.sort(nearest, dim=1).values
        scores[i] = ranked[:, k_min:k_max].double().mean(dim=1)
    return scores
