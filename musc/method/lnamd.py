"""LNAMD: layer-normalised, r x r neighbourhood-averaged patch features (docs/METHOD.md section 3).

One LayerNorm over each image's whole (C, g, g) token map, then an r x r mean with zero padding
counted in the divisor, then L2 normalisation over channels. The reference builds the average with
``nn.Unfold`` and a 1-D adaptive pool; an average pool gives the same numbers (to 5e-7) at a
fraction of the time and memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5


def _patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(N, 1+L, C) tokens, cls first -> (N, C, g, g) patch map in row-major order."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens: expected shape (N, 1+L, C), got {tuple(tokens.shape)}")
    n_images, n_tokens, channels = tokens.shape
    side = math.isqrt(n_tokens - 1)
    if side * side != n_tokens - 1:
        raise ValueError(f"tokens: {n_tokens - 1} patch tokens after the cls token do not form a square grid")
    return tokens[:, 1:, :].reshape(n_images, side, side, channels).permute(0, 3, 1, 2)


def layer_norm_average(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD before the L2 step: (N, 1+L, C) -> (N, L, C), float32."""
    if not isinstance(r, int) or r < 1 or r % 2 == 0:
        raise ValueError(f"r: aggregation degree must be an odd integer >= 1, got {r!r}")
    grid = _patch_grid(torch.as_tensor(tokens)).float()
    normed = F.layer_norm(grid, grid.shape[1:], eps=LAYER_NORM_EPS)
    if r > 1:
        normed = F.avg_pool2d(normed, kernel_size=r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    return normed.flatten(2).transpose(1, 2)


def aggregate(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD features of one layer: (N, 1+L, C) tokens, cls first -> (N, L, C), L2-normalised over C."""
    features = layer_norm_average(tokens, r)
    return features / features.norm(dim=-1, keepdim=True)
