"""How MSM's work is cut into tiles and which sorted votes it averages (docs/METHOD.md section 4).

Plain Python, no torch: the score stage plans its tiles (and a cached rerun checks them) without
loading the numerical libraries.
"""
from __future__ import annotations

from typing import Iterator

from .checks import check_image_count


def msm_rank_window(n_images: int, topmin_min: float = 0.0, topmin_max: float = 0.3) -> tuple[int, int]:
    """The 0-based rank window [k_min, k_max) of the sorted votes that is averaged.

    The reference uses k_max = int((N-1)*topmin_max), which is 0 for N <= 4 and makes every score
    NaN. We clamp k_max to at least 1 (identical for N >= 5; a deviation, docs/METHOD.md section 4).
    """
    check_image_count(n_images)
    k_max = max(1, int((n_images - 1) * topmin_max))
    k_min = min(int((n_images - 1) * topmin_min), k_max - 1)
    return k_min, k_max


def image_blocks(n_images: int, block_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive images, block_size at most each."""
    if block_size < 1:
        raise ValueError(f"block_size: must be >= 1, got {block_size}")
    return [(start, min(start + block_size, n_images)) for start in range(0, n_images, block_size)]


def tile_pairs(n_blocks: int) -> Iterator[tuple[int, int]]:
    """Block index pairs (I, J) with I <= J: each pair of images is computed once."""
    for first in range(n_blocks):
        for second in range(first, n_blocks):
            yield first, second
