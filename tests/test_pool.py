"""Scoring new images against a reference pool; the aligned-parts option."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import musc
from conftest import DEMO_BACKBONE, TINY_CONFIG, run_category
from musc.inputs.datasets import load_category, load_image, load_mask
from musc.method.msm import reference_mutual_scores
from musc.reference_pool import Pool, pool_maps
from musc.inputs.synthetic import make_dataset


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("demo"), seed=0, categories=("fabric",))
    category = load_category("mvtec_ad", root, "fabric")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = musc.load_backbone(DEMO_BACKBONE, "none", 128, [0, 1, 2, 3], device="cpu")
    tokens, embeddings = backbone.extract(torch.stack([backbone.preprocess(load_image(s.path))
                                                       for s in category.samples]))
    masks = np.stack([load_mask(s.mask_path, 128, "truncate") for s in category.samples])
    return category, tokens, embeddings, masks


def test_single_image_against_pool_matches_full_batch(demo_features):
    category, tokens, embeddings, masks = demo_features
    full = musc.score_images(tokens, embeddings, 128)
    labels = np.array([s.label for s in category.samples])
    compared = 0
    for target in np.flatnonzero(labels)[:6]:
        pool_indices = [i for i in range(len(labels)) if i != target][:20]  # 20 earlier images
        new = {r: [musc.aggregate(t[[target]], r) for t in tokens] for r in (1, 3, 5)}
        pool = {r: [musc.aggregate(t[pool_indices], r) for t in tokens] for r in (1, 3, 5)}
        maps, scores = pool_maps(new, pool, 128)
        alone = roc_auc_score(masks[target].ravel(), maps[0].ravel())
        in_batch = roc_auc_score(masks[target].ravel(), full["maps"][target].ravel())
        assert abs(alone - in_batch) <= 0.02, (target, alone, in_batch)
        assert scores[0] == pytest.approx(maps[0].max())
        compared += 1
    assert compared == 6


def test_pool_votes_equal_batch_scoring(demo_features):
    """Scored against a pool, an image gets exactly the scores it would get in one batch with it."""
    _, tokens, _, _ = demo_features
    features = musc.aggregate(tokens[0][:9], 3)
    batch = musc.mutual_scores(features)
    from musc.reference_pool import score_against_pool
    alone = score_against_pool([features[8:]], [features[:8]])[0]  # the one layer
    np.testing.assert_allclose(alone.numpy(), batch[8:].numpy(), atol=1e-6)


def test_pool_is_bounded_oldest_first():
    features = {1: np.zeros((1, 3, 4, 2), np.float32)}
    pool = Pool({}, [], np.zeros(0), {"a": 1}, max_images=5)
    pool.add(features, ["a", "b", "c"], {"a": 1})
    pool.add(features, ["d", "e", "f"], {"a": 1})
    assert pool.names == ["b", "c", "d", "e", "f"] and pool.features[1].shape[1] == 5
    from musc.store import ArtifactError
    with pytest.raises(ArtifactError, match="other settings"):
        pool.add(features, ["g"], {"a": 2})


def test_pool_add_and_score_new_from_the_command_line(prefect_harness, tiny_dataset, tmp_path):
    run_category(tiny_dataset, tmp_path / "artifacts")
    pool_file = tmp_path / "pool.h5"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    added = subprocess.run([sys.executable, "-m", "flows.cli", "pool", "add", "--pool", str(pool_file),
                            str(tmp_path / "artifacts/mvtec_ad/fabric")], capture_output=True, text=True, env=env)
    assert added.returncode == 0, added.stderr
    pool = Pool.load(pool_file)
    assert 0 < len(pool) <= 12 and set(pool.features) == set(TINY_CONFIG["r_list"])
    image = next((tiny_dataset / "fabric/test/hole").glob("*.png"))
    scored = subprocess.run([sys.executable, "-m", "flows.cli", "score-new", "--pool", str(pool_file), str(image),
                             "--out", str(tmp_path / "new")], capture_output=True, text=True, env=env)
    assert scored.returncode == 0, scored.stderr
    assert f"{image}: score" in scored.stdout
    assert (tmp_path / "new" / f"{image.stem}_map.png").stat().st_size > 1000
    anomaly_map = np.load(tmp_path / "new" / f"{image.stem}_map.npy")
    assert anomaly_map.shape == (TINY_CONFIG["image_size"],) * 2


def test_aligned_scoring_restricts_the_neighbourhood():
    torch.manual_seed(1)
    features = torch.nn.functional.normalize(torch.randn(7, 36, 8), dim=-1)
    wide = musc.mutual_scores(features, radius=5)  # radius covering the whole 6 x 6 grid = the paper's rule
    np.testing.assert_allclose(wide.numpy(), reference_mutual_scores(features).numpy(), atol=1e-6)
    narrow = musc.mutual_scores(features, radius=1)
    assert (narrow >= wide - 1e-6).all() and (narrow > wide + 1e-4).any()
    np.testing.assert_allclose(musc.mutual_scores(features, radius=1, block_size=3).numpy(), narrow.numpy(),
                               atol=1e-6)


def test_aligned_option_runs_in_the_pipeline(prefect_harness, tiny_dataset, tmp_path):
    result = run_category(tiny_dataset, tmp_path, aligned_radius=1)
    from musc import store
    assert store.open_artifact(result["scores"][0]["path"]).config["aligned_radius"] == 1
    assert result["metrics"]["pixel_auroc"] > 0.5
