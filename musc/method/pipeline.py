"""The whole method on one set of images in one call, arrays in and arrays out (no artifacts)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .lnamd import aggregate
from .maps import combine_patch_scores, image_scores_from_maps, upsample_maps
from .checks import TOPMIN_MAX, TOPMIN_MIN
from .msm import mutual_scores
from .rscin import rescore


def score_images(layer_tokens: Sequence, embeddings, image_size: int, r_list=(1, 3, 5),
                 topmin_max: float = TOPMIN_MAX, k_list=(1, 2, 3), topmin_min: float = TOPMIN_MIN,
                 block_size: int | None = None, precision: str = "fp32") -> dict[str, np.ndarray]:
    """The MuSc method on one set of images.

    layer_tokens: list over layers of (N, 1+L, C) tokens, cls first; embeddings: (N, D)
    L2-normalised image embeddings (or None to skip RsCIN). ``precision``: MSM's (fp32, bf16, bf16-fast). Returns patch_map (N, L), maps
    (N, S, S), image_scores_raw (N,) and image_scores (N,) (after RsCIN).
    """
    if not layer_tokens:
        raise ValueError("layer_tokens: need the tokens of at least one layer")
    per_degree = [torch.stack([mutual_scores(aggregate(torch.as_tensor(tokens), r), topmin_min, topmin_max,
                                             block_size, precision=precision)
                               for tokens in layer_tokens])
                  for r in r_list]
    patch_map = combine_patch_scores(per_degree)
    maps = upsample_maps(patch_map, image_size)
    raw = image_scores_from_maps(maps)
    return {
        "patch_map": patch_map.numpy(),
        "maps": maps.numpy(),
        "image_scores_raw": raw,
        "image_scores": rescore(raw, embeddings, k_list),
    }
