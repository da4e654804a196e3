"""Retrieval for large pools (``pool_top_k``, opt-in): each part scored against only its k nearest
pool images by a global embedding, in a batch of those k images and itself (docs/METHOD.md section 4).

What holds, and is tested here: k = P is the exact scoring, bit for bit (the same votes, from the
same products of the same pool blocks, reduced over the same window); k < P is *not* bounded below
by the exact score (MuSc's rank window is a fraction of the voters, so k voters average fewer of
their smallest votes: a part whose nearest pool image is its twin scores lower with k = 1), but by
the mean of the smallest int(0.3 k) votes of the whole pool: a retrieved image's vote is one of the
pool's, so the j-th smallest of k votes is at least the j-th smallest of all P; the calibration is
taken the same way; the setting is checked in one line; it enters the keys of what it changes."""
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from musc.inputs.config import ConfigError, MuscConfig, ScoreSettings
from musc.inputs.synthetic import make_dataset
from musc.method.msm import msm_rank_window, reduce_votes
from musc.reference_pool import DecisionRule, PoolFile, PoolSettings, calibrated_threshold, write_pool
from musc.reference_pool.retrieval import calibration_scores, embedding, nearest, pool_embeddings, retrieved_scores
from musc.reference_pool.scoring import in_memory, part_scores, pool_votes

P = 12


def fake_images(names, features):
    from musc.reference_pool import Images
    return Images(list(names), list(names), np.arange(len(names), dtype=float),
                  lambda r, layer, idx: features[r][layer, np.sort(idx)], features[1].shape[2:])


@pytest.fixture
def pool(tmp_path):
    """A pool of P random images (2 layers, degrees 1 and 3, L = 16, C = 8); images 0 and 1 are twins."""
    torch.manual_seed(0)
    features = {r: torch.nn.functional.normalize(torch.randn(2, P, 16, 8), dim=-1).numpy() for r in (1, 3)}
    for r in features:
        features[r][:, 1] = features[r][:, 0]
    settings = PoolSettings("fabric", {"image_size": 32, "layers": [0, 1]}, (1, 3), ScoreSettings(block_size=3))
    write_pool(tmp_path / "pool.h5", settings, [fake_images([f"i{i:02d}" for i in range(P)], features)], 100, {})
    return PoolFile(tmp_path / "pool.h5"), features


def new_parts(count=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, 16, 8, generator=generator), dim=-1)


def test_k_equal_to_the_pool_is_the_exact_scoring_bit_for_bit(pool):
    """All P images retrieved: the same pool blocks, the same products, the same window (P + 1):
    equal to the last bit. And k >= P never retrieves (the exact path itself)."""
    pool, _ = pool
    new = new_parts()
    every = [np.arange(P)] * len(new)
    for r in (1, 3):
        for layer in (0, 1):
            np.testing.assert_array_equal(retrieved_scores(pool, new, r, layer, every).numpy(),
                                          pool.score(new, r, layer).numpy())
    embeddings = np.stack([embedding(part[None].numpy()) for part in new])
    assert nearest(pool, embeddings, P) is None and nearest(pool, embeddings, P + 5) is None
    assert nearest(pool, embeddings, None) is None


def test_retrieval_takes_the_nearest_by_cosine_in_pool_order(pool):
    pool, features = pool
    embeddings = pool_embeddings(pool)
    assert embeddings.shape == (P, 8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    chosen = nearest(pool, embeddings[[0, 5]], 3)
    assert chosen[0][:2].tolist() == [0, 1] and 5 in chosen[1]  # itself (and its twin) first
    assert all((np.diff(c) > 0).all() and len(c) == 3 for c in chosen)
    without = nearest(pool, embeddings[[0, 5]], 3, exclude=[0, 5])
    assert 0 not in without[0] and 1 in without[0] and 5 not in without[1]


@pytest.mark.parametrize("k", [1, 3, 6, 11])
def test_k_below_the_pool_is_bounded_by_the_pools_own_smallest_votes(pool, k):
    """Per patch: the score against k retrieved images (the mean of their smallest int(0.3 k) votes,
    at least the nearest) >= the mean of the smallest int(0.3 k) votes against the whole pool."""
    pool, _ = pool
    new = new_parts(6)
    settings = pool.settings.score
    chosen = nearest(pool, np.stack([embedding(part[None].numpy()) for part in new]), k)
    retrieved = retrieved_scores(pool, new, 1, 1, chosen)
    votes = pool_votes(in_memory(new), len(new), pool.reader(1, 1), P, settings)  # against every pool image
    k_min, k_max = msm_rank_window(k + 1, settings.topmin_min, settings.topmin_max)
    bound = reduce_votes(votes, k_min, k_max)
    assert (retrieved >= bound - 1e-6).all()
    for part, images in enumerate(chosen):  # and it is the part scored against those images, plainly
        plain = part_scores(new[[part]], in_memory(torch.from_numpy(pool.reader(1, 1)(0, P).numpy()[images])),
                            k, settings)
        np.testing.assert_allclose(retrieved[part].numpy(), plain[0].numpy(), atol=1e-6)


def test_fewer_references_do_not_always_raise_the_score(pool):
    """The naive property does not hold: the twin of pool image 0, retrieved alone (k = 1), scores 0
    (to fp32 rounding); against the whole pool its window (int(0.3 P) = 3 votes) averages in two other images."""
    pool, features = pool
    twin = torch.from_numpy(features[1][1, [0]])
    chosen = nearest(pool, embedding(twin.numpy())[None], 1)
    assert chosen[0].tolist() == [0]
    alone, exact = retrieved_scores(pool, twin, 1, 1, chosen), pool.score(twin, 1, 1)
    assert alone.max() < 1e-3 < 0.1 < exact.min()  # 0 up to the rounding of |x|^2 - 2 x.y + |y|^2


def test_the_calibration_is_taken_the_same_way(pool):
    """With k, each pool image is scored against its k nearest other pool images (window k + 1);
    k >= P - 1 is the stored leave-one-out scoring (window P either way)."""
    pool, _ = pool
    assert calibration_scores(pool, None) is pool.self_scores and calibration_scores(pool, P - 1) is pool.self_scores
    k = 4
    embeddings = pool_embeddings(pool)
    chosen = nearest(pool, embeddings, k, exclude=np.arange(P))
    assert all(i not in images for i, images in enumerate(chosen))
    per_degree = [torch.stack([retrieved_scores(pool, pool.reader(r, layer)(0, P), r, layer, chosen)
                               for layer in (0, 1)]) for r in (1, 3)]
    from musc.reference_pool.scoring import image_scores
    expected = image_scores(per_degree, 32)
    np.testing.assert_array_equal(calibration_scores(pool, k), expected)
    threshold, how = DecisionRule(pool_top_k=k).apply(pool)
    assert threshold == calibrated_threshold(expected, 0.01) and f"its {k} nearest" in how
    assert DecisionRule().apply(pool)[0] == calibrated_threshold(pool.self_scores, 0.01)


@pytest.mark.parametrize("value, said", [(0, "must be >= 1, got 0"), (-3, "must be >= 1, got -3"),
                                         (2.5, "expected an integer, got 2.5"), ("5", "expected an integer"),
                                         (True, "expected an integer")])
def test_the_setting_is_checked_in_one_line_naming_it(value, said):
    for make in (lambda: DecisionRule(pool_top_k=value), lambda: MuscConfig(reference="pool.h5", pool_top_k=value)):
        with pytest.raises(ConfigError) as error:
            make()
        assert str(error.value).startswith("pool_top_k: ") and said in str(error.value)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="^pool_top_k: 5 applies only with a reference pool"):
        MuscConfig(pool_top_k=5)


def test_the_command_line_takes_and_checks_it(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    shown = CliRunner().invoke(app, ["score-new", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "--pool-top-k" in shown.output
    refused = CliRunner().invoke(app, ["score-new", "--pool", str(tmp_path / "p.h5"), "--pool-top-k", "0",
                                       str(tmp_path / "a.png")])
    assert refused.exit_code == 2 and "pool_top_k: must be >= 1, got 0" in refused.output, refused.output
    assert "--pool-top-k" in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"},
                                                terminal_width=200).output


def test_the_setting_enters_the_keys_of_what_it_changes(pool, tmp_path):
    """pool_score, guard and decide: one key per k, and unset the key it had before the setting."""
    from musc.stages import decide, guard, pool_score
    from musc.stages.key import StageKey
    pool, _ = pool
    ref = {"stage": "features", "path": str(tmp_path / "features" / "x.h5"), "digest": "d" * 64, "part": "p" * 64}
    keys = [pool_score.plan(ref, pool, k).key.value for k in (None, 5, 10, P)]
    assert len(set(keys)) == 4
    before = StageKey("pool_score", {**pool.settings.score.recorded(), "image_size": 32},
                      {"features": ref["digest"], "pool": pool.digest})
    assert keys[0] == before.value
    evaluate = {"stage": "evaluate", "path": str(tmp_path / "evaluate" / "e.h5"), "digest": "e" * 64}
    assert len({guard.plan(evaluate, pool, DecisionRule(pool_top_k=k)).key.value for k in (None, 5, 10)}) == 3
    scored = {"stage": "pool_score", "path": str(tmp_path / "pool_score" / "s.h5"), "digest": "s" * 64,
              "part": "p" * 64}
    assert len({decide.plan([scored], pool.ref(), DecisionRule(pool_top_k=k)).key.value
                for k in (None, 5, 10)}) == 3
    assert "pool_top_k" not in DecisionRule().recorded()


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    """A real pool (the demo backbone at 64 px) of 12 good fabric images, and 3 new parts, one a defect."""
    from musc.inputs.datasets import load_category
    from musc.reference_pool import add_run_to_pool
    from musc.stages import Run, build_all
    folder = tmp_path_factory.mktemp("retrieval")
    data = make_dataset(folder / "data", n_good=12, n_per_defect=0, size=64, seed=5, categories=("fabric",))
    build_all(Run(load_category("mvtec_ad", data, "fabric"), MuscConfig(**TINY_CONFIG), str(folder / "artifacts")))
    add_run_to_pool(folder / "pool.h5", folder / "artifacts/mvtec_ad/fabric")
    new = make_dataset(folder / "new", n_good=2, n_per_defect=1, size=64, seed=9, categories=("fabric",))
    parts = sorted(str(p) for p in (new / "fabric/test").rglob("*.png"))[:3]
    return folder / "pool.h5", parts, folder


def test_score_new_with_k_of_the_pool_equals_exact_and_smaller_k_keeps_its_own_artifacts(tiny_pool):
    from musc.reference_pool import score_new_images
    pool_path, parts, folder = tiny_pool
    size = len(PoolFile(pool_path))
    days = {k: score_new_images(pool_path, parts, folder / "out" / str(k), DecisionRule(pool_top_k=k), device="cpu",
                                artifacts=folder / "line")
            for k in (None, size, 3)}
    scores = {k: [row["score"] for row in day.rows] for k, day in days.items()}
    assert scores[size] == scores[None]                      # the same to the last bit
    assert scores[3] != scores[None]
    made = sorted(p.name for p in (folder / "line").rglob("pool_score/*.h5"))
    assert len(made) == 3 * len(parts)                       # one artifact per part and setting: never mixed
    assert days[3].threshold != days[None].threshold and days[size].threshold == days[None].threshold


def test_the_guard_takes_it_from_the_run_and_keeps_an_artifact_per_k(tiny_pool):
    """musc run --reference POOL --pool-top-k K: the guard's images scored against their k nearest;
    k = P the exact guard's scores and threshold to the last bit, under another key."""
    from musc import store
    from musc.inputs.datasets import load_category
    from musc.stages import Run, build_all
    pool_path, _, folder = tiny_pool
    size = len(PoolFile(pool_path))
    category = load_category("mvtec_ad", folder / "new", "fabric")
    guards = {}
    for k in (None, size, 3):
        refs = build_all(Run(category, MuscConfig(**TINY_CONFIG, reference=str(pool_path), pool_top_k=k),
                             str(folder / "guarded")))
        guards[k] = (refs["guard"]["path"], store.open_artifact(refs["guard"]["path"], "guard"))
    assert len({path for path, _ in guards.values()}) == 3
    exact, same, fewer = (artifact for _, artifact in guards.values())
    np.testing.assert_array_equal(same.read("pool_scores"), exact.read("pool_scores"))
    assert same.attrs["threshold"] == exact.attrs["threshold"]
    assert not np.array_equal(fewer.read("pool_scores"), exact.read("pool_scores"))
    assert "its 3 nearest" in fewer.attrs["threshold_rule"]
