"""How MSM's work is cut into tiles, how the tiles' votes assemble into each image's row of votes,
and which sorted votes it averages (docs/METHOD.md section 4): the one vote engine of the score
stage, the in-memory ``mutual_scores`` and the reference pool.

Plain Python, no torch: the score stage plans its tiles (and a cached rerun checks them) without
loading the numerical libraries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .checks import TOPMIN_MAX, TOPMIN_MIN, check_image_count


def msm_rank_window(n_images: int, topmin_min: float = TOPMIN_MIN, topmin_max: float = TOPMIN_MAX) -> tuple[int, int]:
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


@dataclass(frozen=True)
class Tile:
    """Two image blocks of one set (a subset of a category, or a pool), scored against each other
    (first <= second): one matrix product gives both blocks' votes."""
    subset: int
    first: int
    second: int
    images_a: tuple[int, ...]
    images_b: tuple[int, ...]

    @property
    def same_block(self) -> bool:
        return self.first == self.second

    def part_name(self, block_size: int) -> str:
        return f"tile_b{block_size}_s{self.subset}_{self.first:04d}_{self.second:04d}"


def set_blocks(members: Sequence[int], block_size: int) -> list[tuple[int, ...]]:
    """The image blocks of one set: its members (original indices) sorted, ``block_size`` at most each."""
    ordered = sorted(int(m) for m in members)
    return [tuple(ordered[a:b]) for a, b in image_blocks(len(ordered), block_size)]


def set_tiles(sets: Sequence[Sequence[int]], block_size: int) -> list[Tile]:
    """Every tile of every set (``sets``: the members of each subset)."""
    tiles = []
    for subset, members in enumerate(sets):
        blocks = set_blocks(members, block_size)
        tiles += [Tile(subset, first, second, blocks[first], blocks[second]) for first, second in tile_pairs(len(blocks))]
    return tiles


def block_row(first: int, n_blocks: int, votes_of: Callable[[int, int], tuple[Any, Any]]) -> Iterator[Any]:
    """The votes of block ``first`` against every block of its set, in block order: tile (first,
    second) holds them as its first block's votes when first <= second, else tile (second, first)
    as its second block's. ``votes_of(first, second)`` -> (a_votes, b_votes) of a tile (I <= J),
    asked for one at a time as the row is walked; the caller joins the row along the image axis."""
    for second in range(n_blocks):
        yield votes_of(first, second)[0] if first <= second else votes_of(second, first)[1]


TILE_MIXINGS = ("aligned", "all")


def tile_sets(members: Sequence[int], tiles_per_image: int = 1, mixing: str = "aligned") -> list[tuple[list[int], int]]:
    """The sets scored mutually among a group of images (``members``: image indices; image ``i``'s
    tiles are rows ``i * T`` ... ``i * T + T - 1``), each as (its rows, the image count its rank window
    is taken from, as ``msm_rank_window`` takes it). Untiled (T = 1), one set: the images.
    ``aligned``: one set per tile position, of that position's tiles (one per image: the untiled
    window); ``all``: one set of every tile of every image, where a tile's votes against its own
    image's tiles are left out, so it has (n - 1) * T votes."""
    count = int(tiles_per_image)
    if mixing not in TILE_MIXINGS:
        raise ValueError(f"tile_mixing: expected {' or '.join(TILE_MIXINGS)}, got {mixing!r}")
    if mixing == "all":
        return [([int(i) * count + t for i in members for t in range(count)], (len(members) - 1) * count + 1)]
    return [([int(i) * count + t for i in members], len(members)) for t in range(count)]
