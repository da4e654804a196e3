"""Pixel metrics from each label's sorted scores, walked in chunks (musc.method.metrics.PixelCurves):
scikit-learn's values, the MVTec AUPRO of a direct computation, float32 maps counted exactly, and a
few bytes a pixel where scikit-learn's curves over every pixel take about a hundred."""
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from musc.method.metrics import PRO_FPR_LIMIT, BinaryCurves, PixelCurves, pixel_metrics


def scene(n=12, size=24, seed=0, decimals=2):
    """Maps with many ties (rounded, as upsampled maps have) and masks of a few regions each."""
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random((n, size, size)), decimals)
    masks = np.zeros((n, size, size), np.uint8)
    for image in range(0, n, 2):
        for _ in range(int(rng.integers(1, 4))):
            row, col, height, width = rng.integers(0, size - 6, 2).tolist() + rng.integers(1, 6, 2).tolist()
            masks[image, row:row + height, col:col + width] = 1
            maps[image, row:row + height, col:col + width] += 0.3 * rng.random()
    return masks, np.round(maps, decimals)


def direct_aupro(masks, maps, limit=PRO_FPR_LIMIT):
    """MVTec's AUPRO by its definition, threshold by threshold: PRO = the mean over connected
    regions of the share of the region at or above t, FPR = the share of normal pixels at or above
    t, at every distinct score; the curve cut at FPR = limit (interpolated), its area / limit."""
    from skimage.measure import label
    regions = [(image, labelled == number) for image, mask in enumerate(masks)
               for labelled in [label(mask)] for number in range(1, labelled.max() + 1)]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append(((normal >= t).mean(), np.mean([(maps[image][region] >= t).mean() for image, region in regions])))
    fpr, pro = np.array(points).T
    inside = fpr <= limit
    x, y = np.r_[fpr[inside], limit], np.r_[pro[inside], np.interp(limit, fpr, pro)]
    return np.trapezoid(y, x) / limit


@pytest.mark.parametrize("chunk", [5, 97, 1 << 18])
@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_curves_give_scikit_learns_values_whatever_the_chunk(chunk, seed):
    masks, maps = scene(seed=seed)
    curves = PixelCurves.of(masks, maps, chunk=chunk)
    labels, scores = masks.ravel(), maps.ravel()
    assert (curves.n_positive, curves.n_negative) == (labels.sum(), labels.size - labels.sum())
    assert curves.auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert curves.average_precision() == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    theirs = BinaryCurves.of(labels, scores)
    assert curves.f1_max() == theirs.f1_max()  # the same operations on the same counts: the same bits
    assert curves.f1_optimal_threshold() == theirs.f1_optimal_threshold()
    assert curves.aupro_mvtec() == pytest.approx(direct_aupro(masks, maps), abs=1e-12)
    assert curves.aupro_mvtec() != pytest.approx(direct_aupro(masks, maps, 0.2), abs=1e-6)  # the limit matters
    # the figures' thinned curves run end to end
    assert (curves.fpr[0], curves.tpr[0], curves.fpr[-1], curves.tpr[-1]) == (0, 0, 1, 1)
    assert (curves.recall[0], curves.recall[-1], curves.precision[-1]) == (1, 0, 1)
    assert np.all(np.diff(curves.fpr) >= 0) and np.all(np.diff(curves.recall) <= 0)


def test_float32_maps_are_counted_exactly_against_float64_thresholds():
    """The reference's PRO thresholds are float64 steps between the extremes; a float32 map is
    compared with them as its float64 value would be (no float64 copy of the pixels is made)."""
    masks, maps = scene(seed=2, decimals=6)
    maps32 = (maps * 0.7 + 0.013).astype(np.float32)
    low, high = float(maps32.min()), float(maps32.max())
    steps = np.arange(low, high, (high - low) / 200)  # the reference's thresholds
    normal = np.flatnonzero(masks.ravel() == 0)[:198]
    maps32.reshape(-1)[normal] = steps[1:199].astype(np.float32)  # pixels next to each step, above or below it
    assert (maps32.min(), maps32.max()) == (low, high) and (steps[1:199].astype(np.float32) > steps[1:199]).any()
    narrow, wide = PixelCurves.of(masks, maps32), PixelCurves.of(masks, maps32.astype(np.float64))
    assert narrow.values == wide.values
    for ours, theirs in zip(narrow.pro, wide.pro, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert narrow.aupro_reference() == wide.aupro_reference()


def test_the_f1_threshold_is_the_lowest_of_equal_f1s_across_chunks():
    """F1 = 2 TP / (TP + FP + P): 2/3 both at 0.9 (TP 1, FP 0) and at 0.6 (TP 2, FP 2) with P = 2;
    ``BinaryCurves`` (argmax over scikit-learn's ascending thresholds) takes 0.6."""
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 0, 1, 0, 0], np.uint8)
    assert BinaryCurves.of(labels, scores).f1_optimal_threshold() == 0.6
    for chunk in (1, 2, 3, 100):
        curves = PixelCurves.of(labels[None, None], scores[None, None], chunk=chunk)
        assert (curves.f1_optimal_threshold(), curves.f1_max()) == (0.6, BinaryCurves.of(labels, scores).f1_max())


def test_a_subset_of_images_is_the_same_as_those_images_alone():
    masks, maps = scene(seed=3)
    chosen = np.array([0, 3, 4, 7, 10])
    subset, alone = PixelCurves.of(masks, maps, chosen), PixelCurves.of(masks[chosen], maps[chosen])
    assert subset.values == alone.values
    np.testing.assert_array_equal(subset.pro[2], alone.pro[2])


def test_one_class_of_pixels_gives_the_references_zeros():
    masks, maps = scene(seed=4)
    assert pixel_metrics(np.zeros_like(masks), maps) == dict.fromkeys(pixel_metrics(masks, maps), 0.0)
    assert pixel_metrics(np.ones_like(masks), maps) == dict.fromkeys(pixel_metrics(masks, maps), 0.0)


def test_pixel_metrics_take_a_few_bytes_a_pixel():
    """300 maps of 128 x 128 (4.9 M pixels, float32): the curves hold the normal pixels' scores (4
    bytes each) and a chunk's working set. scikit-learn's curves of the same pixels took about 100
    bytes a pixel (a float64 sort index, float64 copies, every distinct score's points)."""
    rng = np.random.default_rng(5)
    maps = rng.random((300, 128, 128), dtype=np.float32)
    masks = np.zeros(maps.shape, np.uint8)
    masks[-20:, 30:60, 40:70] = 1
    pixels = maps.size
    tracemalloc.start()
    try:
        PixelCurves.of(masks, maps)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * pixels, f"{peak / pixels:.1f} bytes a pixel"
