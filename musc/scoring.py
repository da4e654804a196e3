"""From patch scores to anomaly maps and image scores (MUSC_SPEC.md section 5), and the whole
method top to bottom in ``score_images``."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .lnamd import aggregate
from .msm import mutual_scores
from .rscin import rescore


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


def score_images(layer_tokens: Sequence, embeddings, image_size: int, r_list=(1, 3, 5),
                 topmin_max: float = 0.3, k_list=(1, 2, 3), topmin_min: float = 0.0,
                 block_size: int | None = None) -> dict[str, np.ndarray]:
    """The MuSc method on one set of images.

    layer_tokens: list over layers of (N, 1+L, C) tokens, cls first; embeddings: (N, D)
    L2-normalised image embeddings (or None to skip RsCIN). Returns patch_map (N, L), maps
    (N, S, S), image_scores_raw (N,) and image_scores (N,) (after RsCIN).
    """
    if not layer_tokens:
        raise ValueError("layer_tokens: need the tokens of at least one layer")
    per_degree = []
    for r in r_list:
        per_layer = [mutual_scores(aggregate(torch.as_tensor(tokens), r), topmin_min, topmin_max, block_size)
                     for tokens in layer_tokens]
        per_degree.append(torch.stack(per_layer).mean(dim=0))
    patch_map = torch.stack(per_degree).mean(dim=0)
    maps = upsample_maps(patch_map, image_size)
    raw = image_scores_from_maps(maps)
    return {
        "patch_map": patch_map.numpy(),
        "maps": maps.numpy(),
        "image_scores_raw": raw,
        "image_scores": rescore(raw, embeddings, k_list),
    }
