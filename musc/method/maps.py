"""From patch scores to anomaly maps and image scores (docs/METHOD.md section 5).

The one place where the scores of several layers and degrees become a map: the mean over layers,
then over degrees, bilinear upsampling to the image size, and the image score as the map's maximum.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def combine_patch_scores(per_degree: Sequence) -> torch.Tensor:
    """Per degree r, the (layers, N, L) patch scores -> (N, L) float64: mean over layers, then degrees."""
    if not len(per_degree):
        raise ValueError("per_degree: need the patch scores of at least one degree")
    return torch.stack([torch.as_tensor(np.asarray(scores), dtype=torch.float64).mean(dim=0)
                        for scores in per_degree]).mean(dim=0)


def upsample_maps(patch_map, image_size: int) -> torch.Tensor:
    """(N, L) patch scores -> (N, S, S) float64 pixel maps, bilinear with align_corners=True."""
    patch_map = torch.as_tensor(patch_map, dtype=torch.float64)
    n_images, n_patches = patch_map.shape
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"patch_map: {n_patches} patches do not form a square grid")
    grid = patch_map.view(n_images, 1, side, side)
    return F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=True)[:, 0]


def image_scores_from_maps(maps) -> np.ndarray:
    """Image score = max over the upsampled pixel map (not over the patch grid)."""
    return torch.as_tensor(maps).flatten(1).amax(dim=1).numpy()


def anomaly_maps(per_degree: Sequence, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per degree, (layers, N, L) patch scores -> anomaly maps (N, S, S) and raw image scores (N,)."""
    maps = upsample_maps(combine_patch_scores(per_degree), image_size)
    return maps.numpy(), image_scores_from_maps(maps)
