"""bf16 screening of MSM's nearest-patch search: bf16 matmul speed, exact fp32 result.

For two image blocks X (patches of A) and Y (patches of B), MSM needs, per patch and per image of
the other block, the smallest squared distance |x|^2 + |y|^2 - 2 x.y. The nearest patch is the one
with the largest x.y up to the spread of |y|^2, so:

1. S = bf16(X) @ bf16(Y)^T (fp32 accumulation, bf16 output): 2 to 2.5x the fp32 rate on CPUs with
   AVX512-BF16 or AMX.
2. Every entry of S is within a proven bound of the exact x.y (``ScreenBound``). For each segment
   (one patch against the L patches of one image) the maximum m of S is found; the nearest
   patch must have S >= m - tau(m), where tau covers both entries' errors and the norm spread.
3. The few candidates at or above that floor get their exact fp32 distance; the minimum over them is
   the exact minimum over the whole segment.

All three steps are torch operations (segment maxima by ``amax``, the candidates by a comparison and
``nonzero``, their exact distances gathered and reduced by ``scatter_reduce``): nothing is compiled.
When a tile has too many candidates (near-identical patches everywhere) it is computed in plain fp32
instead, so the result never depends on the screening and the time never exceeds the fp32 path by
more than the screen.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

BF16_UNIT_ROUNDOFF = 2.0 ** -8   # round-to-nearest to bf16 (8 significant bits)
FP32_UNIT_ROUNDOFF = 2.0 ** -24
ABSOLUTE_SLACK = 1e-6            # covers flushed denormals and the bound's own fp32 evaluation
FALLBACK_FRACTION = 1 / 32       # more candidates than this share of S: fp32 is faster


class ScreeningUnavailable(RuntimeError):
    """The bf16 screening cannot be trusted on this machine (its bf16 products are less accurate than
    the bound assumes)."""


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (else bf16 matmuls are not faster than fp32)."""
    flags = _cpu_flags().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class ScreenBound:
    """|S - x.y| <= absolute + relative * |S| for every entry S of the bf16 product, where

    - absolute = |x - bf16(x)| |y| + |bf16(x)| |y - bf16(y)|  (input rounding, Cauchy-Schwarz, maxima
      over the block) + fp32 accumulation of C products (and the same again for the fp32 recompute);
    - relative = u / (1 - u), u = 2^-8: the bf16 rounding of the fp32 accumulator.
    """

    absolute: float
    relative: float = BF16_UNIT_ROUNDOFF / (1 - BF16_UNIT_ROUNDOFF)

    @classmethod
    def for_blocks(cls, X: torch.Tensor, X16: torch.Tensor, Y: torch.Tensor, Y16: torch.Tensor) -> "ScreenBound":
        def largest(t: torch.Tensor) -> float:
            # fp32 norms of C terms are within C * 2^-24 of the true norm; 1e-4 covers C <= 1600
            return float(torch.linalg.vector_norm(t, dim=-1).max()) * (1 + 1e-4) if t.numel() else 0.0
        channels = X.shape[-1]
        wide_x, wide_y = X16.float(), Y16.float()
        input_rounding = largest(X - wide_x) * largest(Y) + largest(wide_x) * largest(Y - wide_y)
        size_x, size_y = max(largest(X), largest(wide_x)), max(largest(Y), largest(wide_y))
        accumulation = 4 * (channels + 2) * FP32_UNIT_ROUNDOFF * size_x * size_y
        return cls(absolute=input_rounding + accumulation + ABSOLUTE_SLACK)

    def floor(self, maxima: torch.Tensor, norm_spread: float) -> torch.Tensor:
        """The lowest S that the nearest patch of a segment whose screened maximum is ``maxima`` can have.

        The nearest q beats the screened best a: x.y_q - |y_q|^2/2 >= x.y_a - |y_a|^2/2, so
        S_q >= m - 2 absolute - relative (|S_a| + |S_q|) - spread, with |S_q| <= |m| + tau. The last
        term covers evaluating this in fp32 (a few roundings of numbers below |m| + tau).
        """
        tau = (2 * self.absolute + norm_spread + 2 * self.relative * maxima.abs()) / (1 - self.relative)
        return (maxima - tau - 2.0 ** -20 * (maxima.abs() + tau)).contiguous()


@functools.lru_cache(maxsize=None)
def check_bf16_matmul(channels: int) -> None:
    """The bound assumes what oneDNN and PyTorch's CPU kernels do: fp32 accumulation and one rounding
    to bf16 at the end. Check it once per width on products built to make errors add up (positive
    entries, products near 0.5 where the final rounding is relatively largest)."""
    generator = torch.Generator().manual_seed(0)
    X = torch.rand(64, channels, generator=generator) + 0.5
    X = X / X.norm(dim=-1, keepdim=True)
    Y = torch.cat([X.flip(0), torch.randn(64, channels, generator=generator)])
    Y = Y / Y.norm(dim=-1, keepdim=True) * torch.linspace(0.5, 1.5, Y.shape[0])[:, None]
    X16, Y16 = X.bfloat16(), Y.bfloat16()
    bound = ScreenBound.for_blocks(X, X16, Y, Y16)
    screened = (X16 @ Y16.T).double()
    error = (screened - X.double() @ Y.double().T).abs()
    if not (error <= bound.absolute + bound.relative * screened.abs()).all():
        raise ScreeningUnavailable("msm_precision: this PyTorch's bf16 matmul is less accurate than the "
                                   "screen's error bound assumes (fp32 accumulation)")


class BlockScreen:
    """Exact nearest-patch squared distances between sub-blocks of two image blocks, bf16-screened.

    block_a: (A, L, C), block_b: (B, L, C) float32 on the CPU. ``minima(a0, a1, b0, b1)`` returns
    (forward (a1-a0, b1-b0, L), backward (b1-b0, a1-a0, L)) squared distances, as MSM's fp32 tiles,
    or None when the screen leaves too many candidates (the caller then computes that part in fp32,
    and so every later part of the tile: images with large uniform areas have many near-ties).
    """

    def __init__(self, block_a: torch.Tensor, block_b: torch.Tensor):
        self.n_patches, self.channels = block_a.shape[1], block_a.shape[2]
        check_bf16_matmul(self.channels)
        self.X = block_a.reshape(-1, self.channels).float().contiguous()
        self.Y = block_b.reshape(-1, self.channels).float().contiguous()
        self.X16, self.Y16 = self.X.bfloat16(), self.Y.bfloat16()
        self.x_norm = self.X.pow(2).sum(-1).contiguous()
        self.y_norm = self.Y.pow(2).sum(-1).contiguous()
        self.bound = ScreenBound.for_blocks(self.X, self.X16, self.Y, self.Y16)
        self.candidates = 0
        self.fallbacks = 0

    def _spread(self, norms: torch.Tensor) -> float:
        """Half the range of |y|^2 (an upper bound: fp32 sums of C squares are within C * 2^-24)."""
        low, high = torch.aminmax(norms)
        return float(high - low) / 2 + float(high) * self.channels * FP32_UNIT_ROUNDOFF

    def minima(self, a0: int, a1: int, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.fallbacks:  # near-ties are a property of the images: once too many, the whole tile is
            return None     # computed in fp32
        L, n_a, n_b = self.n_patches, a1 - a0, b1 - b0
        Y, y_norm = self.Y[b0 * L:b1 * L], self.y_norm[b0 * L:b1 * L]
        row_spread, col_spread = self._spread(y_norm), self._spread(self.x_norm[a0 * L:a1 * L])
        row_min = torch.empty((n_a, L, n_b), dtype=torch.float32)
        col_min = torch.empty((n_a, n_b, L), dtype=torch.float32)
        limit = int(FALLBACK_FRACTION * L * n_b * L) + 1
        found = 0
        for image in range(n_a):  # one image of A at a time: its S (L x n_b * L) stays small
            rows = slice((a0 + image) * L, (a0 + image + 1) * L)
            S = (self.X16[rows] @ self.Y16[b0 * L:b1 * L].T).float().view(L, n_b, L)
            row_floor = self.bound.floor(S.amax(dim=2), row_spread)   # (L, n_b): a patch against an image of B
            col_floor = self.bound.floor(S.amax(dim=0), col_spread)   # (n_b, L): a patch of B against this image
            in_row, in_col = S >= row_floor[:, :, None], S >= col_floor[None, :, :]
            count = int(in_row.sum()) + int(in_col.sum())
            if count > limit:
                self.fallbacks += 1
                return None
            found += count
            p, j, q = (in_row | in_col).nonzero(as_tuple=True)
            x, y = self.X[rows][p], Y.view(n_b, L, -1)[j, q]
            exact = self.x_norm[rows][p] + y_norm.view(n_b, L)[j, q] - 2.0 * (x * y).sum(-1)
            inf = torch.full((L * n_b,), float("inf"))
            keep = in_row[p, j, q]
            row_min[image] = inf.scatter_reduce(0, (p * n_b + j)[keep], exact[keep], "amin").view(L, n_b)
            keep = in_col[p, j, q]
            col_min[image] = inf.scatter_reduce(0, (j * L + q)[keep], exact[keep], "amin").view(n_b, L)
        self.candidates += found
        return row_min.permute(0, 2, 1), col_min.permute(1, 0, 2)
