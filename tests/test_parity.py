"""Every step of the method against the reference implementation's outputs (tests/fixtures)."""
import numpy as np
import pytest
import torch

import musc
from musc.method.metrics import METRIC_NAMES, aupro_reference, pro_curve

TOL = 1e-5
R_LIST = (1, 3, 5)


def tokens_of(reference, layer):
    return torch.from_numpy(reference["inputs/patch_tokens"][layer])


@pytest.mark.parametrize("r", R_LIST)
def test_lnamd_matches_reference(reference, r):
    for layer in range(4):
        ours = musc.layer_norm_average(tokens_of(reference, layer), r).numpy()
        expected = reference[f"lnamd/r{r}"][:, :, layer, :]
        np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("r", R_LIST)
def test_aggregate_is_l2_normalised_lnamd(reference, r):
    ours = musc.aggregate(tokens_of(reference, 0), r).numpy()
    expected = reference[f"lnamd/r{r}"][:, :, 0, :]
    expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)


# bf16: really screened, no fp32 fallback (the note that a CPU without native bf16 screens slowly is no fallback)
@pytest.mark.filterwarnings(r"error:msm_precision.\s(?!this CPU has no native bf16):UserWarning")
@pytest.mark.parametrize("r", R_LIST)
@pytest.mark.parametrize("block_size,precision", [(None, "fp32"), (3, "fp32"), (4, "fp32"), (4, "bf16")])
def test_msm_per_layer_matches_reference(reference, r, block_size, precision, monkeypatch):
    from musc.method import screening
    monkeypatch.setattr(screening, "FALLBACK_FRACTION", 2.0)  # screen even these small tiles (<= 2 per entry)
    means = []
    for layer in range(4):
        scores = musc.mutual_scores(musc.aggregate(tokens_of(reference, layer), r), 0.0, 0.3,
                                    block_size=block_size, precision=precision)
        assert scores.dtype == torch.float64 and scores.shape == (10, 81)
        np.testing.assert_allclose(scores.numpy(), reference[f"msm/r{r}_layer{layer}"], atol=TOL, rtol=0)
        means.append(scores)
    np.testing.assert_allclose(torch.stack(means).mean(0).numpy(), reference[f"msm/r{r}_layer_mean"],
                               atol=TOL, rtol=0)


def test_msm_n5_edge_case(reference):
    ours = musc.mutual_scores(torch.from_numpy(reference["msm/edge_N5_input"])).numpy()
    np.testing.assert_allclose(ours, reference["msm/edge_N5_output"], atol=TOL, rtol=0)


def test_msm_n3_clamps_k_where_the_reference_gives_nan(reference):
    assert np.isnan(reference["msm/edge_N3_output"]).all()
    features = torch.from_numpy(reference["msm/edge_N3_input"])
    ours = musc.mutual_scores(features).numpy()
    assert np.isfinite(ours).all()
    # documented deviation: k = max(1, int(0.3 * 2)) = 1, the plain minimum over the other images
    distances = torch.cdist(features.double().reshape(-1, 32), features.double().reshape(-1, 32))
    nearest = distances.view(3, 81, 3, 81).amin(dim=3)
    nearest[torch.arange(3), :, torch.arange(3)] = float("inf")
    np.testing.assert_allclose(ours, nearest.amin(dim=2).numpy(), atol=TOL, rtol=0)


def test_msm_needs_two_images(reference):
    with pytest.raises(ValueError, match="at least 2 images"):
        musc.mutual_scores(torch.from_numpy(reference["msm/edge_N3_input"][:1]))


@pytest.fixture(scope="module")
def scored(reference):
    layers = [tokens_of(reference, layer) for layer in range(4)]
    return musc.score_images(layers, reference["rscin/image_features_l2"], image_size=36,
                             r_list=R_LIST, topmin_max=0.3, k_list=(1, 2, 3))


def test_maps_and_image_scores_match_reference(reference, scored):
    np.testing.assert_allclose(scored["patch_map"], reference["maps/patch_mean"], atol=TOL, rtol=0)
    np.testing.assert_allclose(scored["maps"], reference["maps/upsampled"][:, 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(scored["image_scores_raw"], reference["maps/image_score_max"], atol=TOL, rtol=0)
    np.testing.assert_allclose(scored["image_scores"], reference["rscin/k123"], atol=TOL, rtol=0)


def test_upsampling_from_reference_patch_map_is_exact(reference):
    maps = musc.upsample_maps(reference["maps/patch_mean"], 36).numpy()
    np.testing.assert_allclose(maps, reference["maps/upsampled"][:, 0], atol=1e-12, rtol=0)
    np.testing.assert_allclose(musc.image_scores_from_maps(maps), reference["maps/image_score_max"],
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("key,k_list", [("k123", (1, 2, 3)), ("k189", (1, 8, 9))])
def test_rscin_matches_reference(reference, key, k_list):
    scores = reference["maps/image_score_max"]
    embeddings = reference["rscin/image_features_l2"]
    np.testing.assert_allclose(musc.rescore(scores, embeddings, k_list), reference[f"rscin/{key}"],
                               atol=TOL, rtol=0)
    for k, expected in zip(k_list, reference[f"rscin/{key}_per_k"]):
        np.testing.assert_allclose(musc.rescore(scores, embeddings, [k]), expected, atol=TOL, rtol=0)


def test_rscin_k0_returns_raw_scores(reference):
    scores = reference["maps/image_score_max"]
    out = musc.rescore(scores, reference["rscin/image_features_l2"], [0])
    np.testing.assert_array_equal(out, reference["rscin/k0_identity"])
    np.testing.assert_array_equal(musc.rescore(scores, None, [1, 2, 3]), scores)


def test_rscin_rejects_k_larger_than_n(reference):
    with pytest.raises(ValueError, match="k_list"):
        musc.rescore(reference["maps/image_score_max"], reference["rscin/image_features_l2"], [11])


@pytest.mark.parametrize("key", ["k123", "k189", "k0"])
def test_metrics_from_stored_arrays(reference, key):
    scores = reference["rscin/k0_identity"] if key == "k0" else reference[f"rscin/{key}"]
    ours = musc.compute_metrics(reference["inputs/labels"], scores, reference["inputs/masks"],
                                reference["maps/upsampled"])
    expected = dict(zip(reference["attrs"]["metric_names"], reference[f"metrics/{key}"]))
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert set(ours) == set(METRIC_NAMES)


def test_pro_curve_matches_reference(reference):
    masks = reference["inputs/masks"][:, 0]
    maps = reference["maps/upsampled"][:, 0]
    thresholds, fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(thresholds, reference["pro_curve/thresholds"], atol=1e-12, rtol=0)
    np.testing.assert_allclose(fpr, reference["pro_curve/fpr"], atol=1e-12, rtol=0)
    np.testing.assert_allclose(pro, reference["pro_curve/pro"], atol=1e-12, rtol=0)
    np.testing.assert_array_equal(fpr < 0.3, reference["pro_curve/kept_fpr_lt_0p3"])
    assert aupro_reference(masks, maps) == pytest.approx(reference["metrics/k123"][6], abs=1e-9)


def test_end_to_end_metrics_within_tolerance(reference, scored):
    ours = musc.compute_metrics(reference["inputs/labels"], scored["image_scores"],
                                reference["inputs/masks"][:, 0], scored["maps"])
    for name, value in zip(reference["attrs"]["metric_names"], reference["metrics/k123"]):
        assert ours[name] == pytest.approx(value, abs=1e-3), name
