"""A pool grows at the cost of its own new work (musc/reference_pool/votes.py): a run's pool reuses
the votes its score stage made, an addition computes only the new images' comparisons, a removal
or the size bound computes none; the calibration is the one of computing every vote anew."""
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from musc import store
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import load_category
from musc.reference_pool import Images, PoolFile, add_run_to_pool, write_pool
from musc.reference_pool.additions import remove_from_pool
from musc.reference_pool import scoring, votes
from musc.reference_pool.pool import leave_one_out_scores
from musc.stages import Run, build_all

VARIANTS = {"untiled": {}, "aligned": {"tiles": [2, 2], "tile_mixing": "aligned"},
            "all": {"tiles": [2, 2], "tile_mixing": "all"}}


def plates(folder: Path, seed: int, n_good: int) -> Path:
    from musc.inputs.synthetic import make_parts
    made = make_parts(folder.parent / f"made_{folder.name}", n_good=n_good, n_defective=1, size=64, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index, source in enumerate(sorted((made / "plate/test/good").glob("*.png"))):
        shutil.copy(source, folder / f"good_{seed}_{index}.png")
    shutil.copy(sorted((made / "plate/test/spot").glob("*.png"))[0], folder / f"spot_{seed}.png")
    return folder


def scored_run(folder: Path, artifacts: Path, **settings):
    return build_all(Run(load_category("folder", folder, "plate"),
                         MuscConfig(**{**TINY_CONFIG, "block_size": 2, **settings}), str(artifacts)))


def counted(monkeypatch) -> dict:
    """Counts the tile products made from now on by the pool's calibration (each ``tile_minima``)."""
    calls = {"tiles": 0}
    for module in (votes, scoring):
        real = module.tile_minima

        def counting(*args, real=real, **kwargs):
            calls["tiles"] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, "tile_minima", counting)
    return calls


def anew(path: Path) -> np.ndarray:
    """The pool's calibration computed from its features alone, every vote made again (as before
    votes were kept)."""
    pool = PoolFile(path)
    return leave_one_out_scores(pool.reader, len(pool), pool.settings)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def two_runs(request, tmp_path_factory):
    """Two scored runs (7 and 5 plates) of one variant: untiled, or 2 x 2 tiles aligned or all."""
    folder = tmp_path_factory.mktemp(request.param)
    return (request.param, scored_run(plates(folder / "a", 3, 6), folder / "art_a", **VARIANTS[request.param]),
            scored_run(plates(folder / "b", 4, 4), folder / "art_b", **VARIANTS[request.param]))


def test_a_runs_pool_reuses_its_votes_and_an_addition_computes_only_its_own(tmp_path, monkeypatch, two_runs):
    variant, first, second = two_runs
    for refs, n_images in ((first, 7), (second, 5)):  # the score stage kept its votes, one (n, n, L) per set
        with h5py.File(refs["score"][0]["path"]) as f:
            layers, sets, n, n_again, _ = f["votes"].shape
            rows = n_images * (4 if variant == "all" else 1)
            assert (layers, sets, n, n_again) == (4, 4 if variant == "aligned" else 1, rows, rows)
            count = 4 if variant == "all" else 1  # rows of one image in a set: its tiles, left out (+inf)
            own = np.arange(rows) // count == 1 // count  # row 1's own image's rows
            assert np.isinf(f["votes"][0, 0, 1][own]).all() and np.isfinite(f["votes"][0, 0, 1][~own]).all()
    pool = tmp_path / "pool.h5"
    calls = counted(monkeypatch)
    add_run_to_pool(pool, first["evaluate"]["path"], include_flagged=True)
    assert calls["tiles"] == 0  # every comparison the run made, reused
    np.testing.assert_allclose(PoolFile(pool).self_scores, anew(pool), rtol=1e-6, atol=0)
    assert votes.votes_path(pool).is_file()

    calls["tiles"] = 0
    add_run_to_pool(pool, second["evaluate"]["path"], include_flagged=True)
    size = PoolFile(pool).settings.score.block_size
    blocks = [-(-rows // size) for rows in ((7 * 4, 5 * 4) if variant == "all" else (7, 5))]
    per_set = blocks[0] * blocks[1]  # the second run's blocks against the first's, nothing else
    set_count = 4 if variant == "aligned" else 1
    assert calls["tiles"] == per_set * set_count * 4 * 2  # x layers x degrees
    grown = PoolFile(pool)
    assert len(grown) == 12
    np.testing.assert_allclose(grown.self_scores, anew(pool), rtol=1e-6, atol=0)

    calls["tiles"] = 0
    remove_from_pool(pool, [grown.digests[3], grown.digests[9]], "confirmed defect")
    assert calls["tiles"] == 0 and len(PoolFile(pool)) == 10
    np.testing.assert_allclose(PoolFile(pool).self_scores, anew(pool), rtol=1e-6, atol=0)


def fake(names, features, digests=None):
    return Images(list(names), list(digests or names), np.arange(len(names), dtype=float),
                  lambda r, layer, idx: features[r][layer, np.sort(idx)], features[1].shape[2:])


def random_features(seed, n):
    generator = torch.Generator().manual_seed(seed)
    return {r: torch.nn.functional.normalize(torch.randn(2, n, 16, 8, generator=generator), dim=-1).numpy()
            for r in (1, 3)}


def test_the_bound_drops_votes_and_a_part_without_votes_is_compared_once(tmp_path, monkeypatch):
    from musc.reference_pool import PoolSettings
    from musc.inputs.config import ScoreSettings
    settings = PoolSettings("plate", {"image_size": 32, "layers": [0, 1]}, (1, 3), ScoreSettings(block_size=3))
    path = tmp_path / "pool.h5"
    write_pool(path, settings, [fake([f"p{i}" for i in range(9)], random_features(0, 9))], 10, {})
    np.testing.assert_allclose(PoolFile(path).self_scores, anew(path), rtol=1e-6, atol=0)
    calls = counted(monkeypatch)
    new = fake(["n0", "n1", "n2", "n3"], random_features(1, 4))
    kept = write_pool(path, settings, [PoolFile(path).images(), new], 10, {}, pool_id=PoolFile(path).id)
    assert [name for name, _ in kept.dropped] == ["p0", "p1", "p2"]  # the oldest, their votes dropped
    # the 4 new among themselves (blocks of 3: tiles (0,0), (0,1), (1,1)), and 2 x 2 blocks against the 6 kept
    assert calls["tiles"] == (3 + 4) * 2 * 2
    np.testing.assert_allclose(PoolFile(path).self_scores, anew(path), rtol=1e-6, atol=0)


def test_votes_describing_another_pool_are_never_used(tmp_path, monkeypatch):
    from musc.reference_pool import PoolSettings
    settings = PoolSettings("plate", {"image_size": 32, "layers": [0, 1]}, (1, 3))
    features = random_features(2, 8)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_pool(a, settings, [fake([f"p{i}" for i in range(8)], features)], 10, {})
    shuffled = {r: f[:, ::-1].copy() for r, f in features.items()}  # the same images, another order
    write_pool(b, settings, [fake([f"p{i}" for i in range(8)][::-1], shuffled)], 10, {})
    shutil.copy(votes.votes_path(a), votes.votes_path(b))  # a's votes beside b: another order, refused
    shutil.copy(store.manifest_path(votes.votes_path(a)), store.manifest_path(votes.votes_path(b)))
    assert votes.kept_votes(PoolFile(b)) is None and votes.kept_votes(PoolFile(a)) is not None
    calls = counted(monkeypatch)
    write_pool(b, settings, [PoolFile(b).images(), fake(["x"], random_features(3, 1))], 10, {})
    assert calls["tiles"] > 0
    np.testing.assert_allclose(PoolFile(b).self_scores, anew(b), rtol=1e-6, atol=0)
    votes.votes_path(b).write_bytes(b"broken")  # a damaged votes file: computed anew, never trusted
    assert votes.kept_votes(PoolFile(b)) is None


def test_votes_too_large_are_not_kept_and_change_nothing(tmp_path, monkeypatch):
    data = plates(tmp_path / "a", 3, 5)
    kept = scored_run(data, tmp_path / "kept")
    from musc.stages import score
    monkeypatch.setattr(score, "KEPT_VOTES_BYTES", 1000)
    monkeypatch.setattr(votes, "SET_VOTES_BYTES", 1000)
    unkept = scored_run(data, tmp_path / "unkept")
    with h5py.File(unkept["score"][0]["path"]) as f, h5py.File(kept["score"][0]["path"]) as g:
        assert "votes" not in f and "votes" in g
        np.testing.assert_array_equal(f["scores"][()], g["scores"][()])
    pool = tmp_path / "pool.h5"
    add_run_to_pool(pool, unkept["evaluate"]["path"], include_flagged=True)
    assert not votes.votes_path(pool).exists()
    np.testing.assert_allclose(PoolFile(pool).self_scores, anew(pool), rtol=1e-6, atol=0)
