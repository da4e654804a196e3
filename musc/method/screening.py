"""bf16 screening of MSM's nearest-patch search: bf16 matmul speed, exact fp32 result.

For two image blocks X (patches of A) and Y (patches of B), MSM needs, per patch and per image of
the other block, the smallest squared distance |x|^2 + |y|^2 - 2 x.y. The nearest patch is the one
with the largest x.y up to the spread of |y|^2, so:

1. S = bf16(X) @ bf16(Y)^T (fp32 accumulation, bf16 output): 2 to 2.5x the fp32 rate on CPUs with
   AVX512-BF16 or AMX.
2. Every entry of S is within a proven bound of the exact x.y (``ScreenBound``). For each segment
   (one patch against the L patches of one image) the kernel finds the maximum m of S; the nearest
   patch must have S >= m - tau(m), where tau covers both entries' errors and the norm spread.
3. The few candidates at or above that floor get their exact fp32 distance; the minimum over them is
   the exact minimum over the whole segment.

Step 1 is torch, steps 2-3 are two small C kernels (``screen.c``) compiled once with the system C
compiler and cached (``MUSC_KERNEL_CACHE``, default ~/.cache/musc-flow). When a tile has too many
candidates (near-identical patches everywhere) it is computed in plain fp32 instead, so the result
never depends on the screening and the time never exceeds the fp32 path by more than the screen.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

KERNEL_SOURCE = Path(__file__).with_name("screen.c")
COMPILE_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
BF16_UNIT_ROUNDOFF = 2.0 ** -8   # round-to-nearest to bf16 (8 significant bits)
FP32_UNIT_ROUNDOFF = 2.0 ** -24
ABSOLUTE_SLACK = 1e-6            # covers flushed denormals and the bound's own fp32 evaluation
FALLBACK_FRACTION = 1 / 32       # more candidates than this share of S: fp32 is faster (about 14x per entry)


class ScreeningUnavailable(RuntimeError):
    """The bf16 screening kernels cannot be built on this machine."""


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


def _cache_dir() -> Path:
    return Path(os.environ.get("MUSC_KERNEL_CACHE") or Path.home() / ".cache" / "musc-flow")


def _build(compiler: str, built: Path, library: Path) -> None:
    try:
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(KERNEL_SOURCE)],
                                capture_output=True, text=True)
    except OSError as error:
        raise ScreeningUnavailable(f"msm_precision: cannot run the C compiler {compiler!r} ({error.strerror})") from None
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        raise ScreeningUnavailable(f"msm_precision: building {KERNEL_SOURCE.name} with {compiler} failed ({detail})")
    os.replace(built, library)  # atomic: concurrent builders each publish a whole library


@functools.lru_cache(maxsize=None)
def kernels() -> ctypes.CDLL:
    """The compiled screening kernels, built on first use and cached per source, compiler and CPU."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise ScreeningUnavailable("msm_precision: 'bf16' needs a C compiler (cc or $CC) to build its "
                                   "kernel once; none was found. Install gcc or use msm_precision: fp32")
    source = KERNEL_SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(COMPILE_FLAGS).encode(), compiler.encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    folder = _cache_dir()
    library = folder / f"musc-screen-{key}.so"
    if not library.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                _build(compiler, Path(scratch) / library.name, library)
        except OSError as error:
            raise ScreeningUnavailable(f"msm_precision: cannot write the kernel cache {folder} ({error.strerror}); "
                                       "set MUSC_KERNEL_CACHE to a writable folder") from None
    lib = ctypes.CDLL(str(library))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.musc_segment_maxima.argtypes = [ptr, i64, i64, ptr, ptr]
    lib.musc_segment_maxima.restype = None
    lib.musc_candidate_minima.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, ptr, i64]
    lib.musc_candidate_minima.restype = i64
    return lib


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
        self.lib = kernels()
        self.n_patches, self.channels = block_a.shape[1], block_a.shape[2]
        check_bf16_matmul(self.channels)
        self.X = block_a.reshape(-1, self.channels).float().contiguous()
        self.Y = block_b.reshape(-1, self.channels).float().contiguous()
        self.X16, self.Y16 = self.X.bfloat16(), self.Y.bfloat16()
        self.x_norm = self.X.pow(2).sum(-1).contiguous()
        self.y_norm = self.Y.pow(2).sum(-1).contiguous()
        self.bound = ScreenBound.for_blocks(self.X, self.X16, self.Y, self.Y16)
        self.threads = max(1, torch.get_num_threads())
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
        rows_b = slice(b0 * L, b1 * L)
        Y16, Y = self.Y16[rows_b], self.Y[rows_b]
        y_norm = self.y_norm[rows_b]
        X, x_norm = self.X.view(-1, L, self.channels)[a0:a1], self.x_norm.view(-1, L)[a0:a1]
        row_spread, col_spread = self._spread(y_norm), self._spread(x_norm)
        row_min = torch.empty((n_a, L, n_b), dtype=torch.float32)
        col_min = torch.empty((n_a, n_b * L), dtype=torch.float32)
        limit = int(FALLBACK_FRACTION * L * n_b * L) + 1
        found = 0
        # One image of A per thread; a chunk of S (threads x L x n_b*L bf16) stays in the cache
        # between the two sweeps.
        for first in range(0, n_a, self.threads):
            images = range(first, min(first + self.threads, n_a))
            S = (self.X16[(a0 + first) * L:(a0 + images.stop) * L] @ Y16.T).view(len(images), L, n_b * L)
            row_max = torch.empty((len(images), L, n_b), dtype=torch.float32)
            col_max = torch.empty((len(images), n_b * L), dtype=torch.float32)
            _run([functools.partial(self.lib.musc_segment_maxima, S[k].data_ptr(), n_b, L,
                                    row_max[k].data_ptr(), col_max[k].data_ptr())
                  for k in range(len(images))])
            row_floor = self.bound.floor(row_max, row_spread)
            col_floor = self.bound.floor(col_max, col_spread)
            counts = _run([functools.partial(
                self.lib.musc_candidate_minima, S[k].data_ptr(), n_b, L, row_floor[k].data_ptr(),
                col_floor[k].data_ptr(), X[i].data_ptr(), Y.data_ptr(), x_norm[i].data_ptr(), y_norm.data_ptr(),
                self.channels, row_min[i].data_ptr(), col_min[i].data_ptr(), limit)
                for k, i in enumerate(images)])
            if min(counts) < 0:
                self.fallbacks += 1
                return None
            found += sum(counts)
        self.candidates += found
        return row_min.permute(0, 2, 1), col_min.view(n_a, n_b, L).permute(1, 0, 2)


_pool: ThreadPoolExecutor | None = None


def _run(jobs: list) -> list:
    """Run the kernel calls (ctypes releases the GIL) on a shared pool of threads."""
    global _pool
    if len(jobs) == 1:
        return [jobs[0]()]
    if _pool is None:
        _pool = ThreadPoolExecutor(max(2, torch.get_num_threads()), thread_name_prefix="musc-screen")
    return list(_pool.map(lambda job: job(), jobs))
