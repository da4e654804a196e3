"""Image tiling for large parts (docs/METHOD.md section 10): where each of an image's R x C tiles lies,
and how the tiles' patch scores are stitched back into one map at the image's full resolution.

(Not to be confused with MSM's tiles of image blocks, ``musc.method.blocks``: an image tile here is a
crop of one image, scored as an image of its own.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MuscError


def _axis_spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """[start, stop) of ``count`` equal spans covering [0, length), neighbours sharing ``overlap``
    of a span: span = length / (count - overlap * (count - 1)), step = span * (1 - overlap)."""
    if count == 1:
        return [(0, length)]
    span = length / (count - overlap * (count - 1))
    step = span * (1.0 - overlap)
    spans = []
    for index in range(count):
        start = int(round(index * step))
        stop = length if index == count - 1 else min(length, int(round(index * step + span)))
        spans.append((start, stop))
    return spans


def tile_boxes(height: int, width: int, grid: tuple[int, int], overlap: float = 0.0) -> np.ndarray:
    """(R*C, 4) int64 boxes (top, left, bottom, right), row-major, covering an image of
    ``height`` x ``width`` pixels with ``grid`` = (R, C) tiles overlapping by ``overlap`` (a fraction
    of a tile)."""
    rows, columns = (int(n) for n in grid)
    if rows > height or columns > width:
        raise ValueError(f"tiles: {rows} x {columns} tiles do not fit an image of {width} x {height} pixels")
    boxes = [(top, left, bottom, right)
             for top, bottom in _axis_spans(int(height), rows, float(overlap))
             for left, right in _axis_spans(int(width), columns, float(overlap))]
    return np.asarray(boxes, dtype=np.int64)


def stitch(patch_maps, boxes, height: int, width: int) -> np.ndarray:
    """One image's map (height, width) float64 from its tiles' patch scores (T, L): each tile's
    square patch grid upsampled bilinearly (align_corners, as ``maps.upsample_maps``) to its box,
    pixels covered by several tiles averaged."""
    import torch
    import torch.nn.functional as F
    patch_maps = torch.as_tensor(np.asarray(patch_maps), dtype=torch.float64)
    side = int(round(patch_maps.shape[1] ** 0.5))
    if side * side != patch_maps.shape[1]:
        raise ValueError(f"patch_maps: {patch_maps.shape[1]} patches do not form a square grid")
    total = np.zeros((height, width))
    covered = np.zeros((height, width))
    for scores, (top, left, bottom, right) in zip(patch_maps, np.asarray(boxes)):
        grid = scores.view(1, 1, side, side)
        tile = F.interpolate(grid, size=(int(bottom - top), int(right - left)), mode="bilinear", align_corners=True)
        total[top:bottom, left:right] += tile[0, 0].numpy()
        covered[top:bottom, left:right] += 1.0
    if (covered == 0).any():
        raise ValueError("boxes: the tiles do not cover the whole image")
    return total / covered


class TileSizeError(MuscError, ValueError):
    """An image that is not of the size its tiles were laid out for."""


@dataclass(frozen=True)
class ImageTiling:
    """How the images of a tiled run (all of one size, height x width) are cut: the boxes of each
    image's tiles (``tile_boxes``), row-major; a tiled pool scores parts of its runs' size the same way."""
    height: int
    width: int
    boxes: np.ndarray

    @classmethod
    def of_size(cls, height: int, width: int, grid, overlap: float | None = None) -> "ImageTiling":
        return cls(int(height), int(width), tile_boxes(height, width, grid, overlap or 0.0))

    @property
    def count(self) -> int:
        return len(self.boxes)

    def check_size(self, image, path: str, expected: str = "the category's first image has") -> None:
        """TileSizeError naming the file when an image (PIL) is not of the tiling's size (the tiles of
        the images must lie at the same places)."""
        if image.size != (self.width, self.height):
            raise TileSizeError(f"{path}: {image.size[0]} x {image.size[1]} pixels, but {expected} "
                                f"{self.width} x {self.height}")

    def cut(self, image, path: str) -> list:
        """The tiles of one image (PIL), in the order of ``boxes`` (``check_size`` first)."""
        self.check_size(image, path)
        return [image.crop((int(left), int(top), int(right), int(bottom))) for top, left, bottom, right in self.boxes]

    def stitch(self, patch_maps) -> np.ndarray:
        """One image's (height, width) map from its tiles' (T, L) patch scores (``stitch``)."""
        return stitch(patch_maps, self.boxes, self.height, self.width)
