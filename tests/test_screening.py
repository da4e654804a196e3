"""bf16 screening of MSM (musc/method/screening.py): the error bound holds, and the result is the fp32 one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import musc
from musc.method import screening
from musc.method.msm import _minima_between, tile_minima
from musc.inputs.config import ScoreSettings
from musc.reference_pool import score_against_pool
from musc.method.screening import BlockScreen, ScreenBound


@pytest.fixture
def always_screen(monkeypatch):
    """Screen every part whatever its candidate count (small test tiles would fall back to fp32);
    yields the list of parts screened."""
    monkeypatch.setattr(screening, "FALLBACK_FRACTION", 2.0)  # a candidate per entry and direction at most
    screened = []
    original = BlockScreen.minima

    def minima(self, *bounds):
        result = original(self, *bounds)
        assert result is not None
        screened.append(bounds)
        return result
    monkeypatch.setattr(BlockScreen, "minima", minima)
    return screened


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def bound_inputs():
    """Blocks of patches (rows) of several kinds: unit, unnormalised, shared component, odd width."""
    generator = torch.Generator().manual_seed(3)
    shared = torch.randn(1, 64, generator=generator)
    return {
        "unit C=256": (unit(700, 256, seed=1), unit(650, 256, seed=2)),
        "norms up to 30": (torch.randn(500, 96, generator=generator) * 3, torch.randn(400, 96, generator=generator)),
        "shared component": (F.normalize(shared + 0.1 * torch.randn(600, 64, generator=generator), dim=-1),
                             F.normalize(shared + 0.1 * torch.randn(600, 64, generator=generator), dim=-1)),
        "C=37": (unit(300, 37, seed=4), -unit(300, 37, seed=5)),
    }


@pytest.mark.parametrize("kind", list(bound_inputs()))
def test_every_bf16_product_is_within_the_bound(kind):
    X, Y = bound_inputs()[kind]
    X16, Y16 = X.bfloat16(), Y.bfloat16()
    bound = ScreenBound.for_blocks(X, X16, Y, Y16)
    screened = (X16 @ Y16.T).double()
    exact = X.double() @ Y.double().T
    error = (screened - exact).abs()
    assert (error <= bound.absolute + bound.relative * screened.abs()).all()
    # the bound is not vacuous: the errors reach a good part of it
    assert error.max() > 0.2 * (bound.absolute + bound.relative * screened.abs()).max()


def test_the_output_rounding_term_is_needed():
    """bf16 keeps 8 significant bits: rounding the fp32 accumulator costs up to 2^-8 relative (just
    above a power of two), so a bound with half that would be violated by products near 0.5."""
    x = unit(1, 64, seed=6)
    noise = unit(4000, 64, seed=7)
    orthogonal = F.normalize(noise - (noise @ x.T) * x, dim=-1)
    cosine = torch.linspace(0.5, 0.53, 4000)[:, None]
    Y = cosine * x + (1 - cosine ** 2).sqrt() * orthogonal
    screened = (x.bfloat16() @ Y.bfloat16().T).double()
    accumulator = x.bfloat16().double() @ Y.bfloat16().double().T
    relative = ((screened - accumulator).abs() / screened.abs()).max()
    assert 2.0 ** -9 < relative <= ScreenBound(absolute=0.0).relative


def exact_and_screened(block_a, block_b, same_block=False):
    fp32 = tile_minima(block_a, block_b, same_block=same_block)
    bf16 = tile_minima(block_a, block_b, same_block=same_block, precision="bf16")
    return fp32, bf16


@pytest.mark.parametrize("n_a,n_b,patches,channels", [(3, 2, 50, 40), (2, 3, 16, 16), (1, 1, 5, 7), (4, 4, 81, 256)])
def test_screened_tiles_equal_fp32(n_a, n_b, patches, channels, always_screen):
    block_a, block_b = unit(n_a, patches, channels, seed=8), unit(n_b, patches, channels, seed=9)
    for same_block in (False, True):
        b = block_a if same_block else block_b
        (fa, fb), (sa, sb) = exact_and_screened(block_a, b, same_block)
        torch.testing.assert_close(sa, fa, atol=1e-6, rtol=0)
        torch.testing.assert_close(sb, fb, atol=1e-6, rtol=0)
    assert always_screen


def test_near_ties_keep_the_exact_minimum():
    """Each B image holds 128 patches of an A image twice: exactly, and moved by 0.03 (a dot product
    0.0005 lower, far inside the bf16 error). The screen cannot tell the two apart; the fp32
    recompute must pick the copy. Compared as squared distances, what MSM's fp32 tiles compute."""
    block_a = unit(2, 256, 128, seed=10)
    images = []
    for j in range(4):
        chosen = block_a[j % 2, torch.randperm(256, generator=torch.Generator().manual_seed(j))[:128]]
        noise = unit(128, 128, seed=20 + j)
        orthogonal = F.normalize(noise - (noise * chosen).sum(-1, keepdim=True) * chosen, dim=-1)
        moved = F.normalize(chosen + 0.03 * orthogonal, dim=-1)
        images.append(torch.cat([moved, chosen]))
    block_b = torch.stack(images)
    screen = BlockScreen(block_a, block_b)
    screened = screen.minima(0, 2, 0, 4)
    segments = 2 * 2 * 4 * 256  # both directions
    assert screened is not None and screen.candidates > 1.2 * segments
    forward, backward = _minima_between(block_a, block_b, "fp32")(0, 2, 0, 4)
    # fp32 sums near |x|^2 + |y|^2 = 2 (ulp 2.4e-7) in another order: a few ulps apart
    torch.testing.assert_close(screened[0], forward, atol=2e-6, rtol=0)
    torch.testing.assert_close(screened[1], backward, atol=2e-6, rtol=0)
    for j in range(4):  # B image j copies A image j % 2
        assert (backward[j, j % 2, 128:] < 1e-5).all() and (backward[j, j % 2, :128] > 5e-4).all()
        assert (forward[j % 2, j] < 1e-5).sum() == 128  # each copied patch found its copy, not the moved one


def test_uniform_images_fall_back_to_fp32():
    """Every patch alike (a blank background): nearly every entry is a candidate, so the tile is
    computed in fp32, and the rest of the tile too."""
    flat = F.normalize(torch.ones(1, 64) + 1e-3 * unit(3, 49, 64, seed=12), dim=-1)
    screen = BlockScreen(flat, flat)
    assert screen.minima(0, 1, 1, 3) is None and screen.fallbacks == 1
    assert screen.minima(1, 2, 2, 3) is None
    with pytest.warns(UserWarning, match="too many near-identical patches"):
        (fa, fb), (sa, sb) = exact_and_screened(flat, flat, same_block=True)
    assert torch.equal(sa, fa) and torch.equal(sb, fb)


def test_non_finite_features_give_the_fp32_result():
    block = unit(3, 20, 16, seed=13)
    block[1, 4, 2] = float("nan")
    (fa, _), (sa, _) = exact_and_screened(block, unit(2, 20, 16, seed=14))
    assert torch.equal(fa.isnan(), sa.isnan()) and torch.equal(fa.nan_to_num(), sa.nan_to_num())


def test_mutual_scores_and_pool_scores_match_fp32(always_screen):
    Z = unit(12, 81, 64, seed=15)
    fp32 = musc.mutual_scores(Z, block_size=5)
    bf16 = musc.mutual_scores(Z, block_size=5, precision="bf16")
    np.testing.assert_allclose(bf16.numpy(), fp32.numpy(), atol=1e-6, rtol=0)
    new, pool = [unit(3, 81, 64, seed=16)], [Z]
    np.testing.assert_allclose(score_against_pool(new, pool, ScoreSettings(msm_precision="bf16")).numpy(),
                               score_against_pool(new, pool).numpy(), atol=1e-6, rtol=0)
    assert len(always_screen) >= 3 + 2  # tiles of 5 images (one split into halves), and the pool


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match="^msm_precision"):
        musc.mutual_scores(unit(5, 9, 8), precision="fp16")


def test_a_matmul_outside_the_bound_disables_the_screen(monkeypatch):
    """If this PyTorch's bf16 matmul were less accurate than the bound assumes, MSM must not trust it."""
    monkeypatch.setattr(ScreenBound, "for_blocks", classmethod(lambda cls, *blocks: cls(absolute=0.0, relative=0.0)))
    screening.check_bf16_matmul.cache_clear()
    try:
        with pytest.raises(screening.ScreeningUnavailable, match="^msm_precision: this PyTorch's bf16 matmul"):
            screening.check_bf16_matmul(48)
        Z = unit(6, 16, 48, seed=18)
        with pytest.warns(UserWarning, match="computing in fp32 instead"):
            scores = musc.mutual_scores(Z, precision="bf16")
    finally:
        screening.check_bf16_matmul.cache_clear()
    np.testing.assert_array_equal(scores.numpy(), musc.mutual_scores(Z).numpy())
