"""Image- and pixel-level metrics (docs/METHOD.md section 7).

``compute_metrics`` returns what the reference's ``compute_metrics`` returns (fractions; 0 where a
metric is undefined because only one class is present), plus the MVTec/anomalib AUPRO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRIC_NAMES = ("image_auroc", "image_f1max", "image_ap",
                "pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "pixel_aupro_mvtec")
PRO_FPR_LIMIT = 0.3
PRO_THRESHOLDS = 200


@dataclass(frozen=True)
class BinaryCurves:
    """scikit-learn's ROC and precision-recall curves of one set of labels and scores (the images'),
    computed once: AUROC, AP and F1-max come from them (the values of roc_auc_score and
    average_precision_score, which compute the same curves internally), and so do the ROC/PR figures.
    The pixels' are ``PixelCurves``: the same values, without holding millions of points."""
    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pr_thresholds: np.ndarray

    @classmethod
    def of(cls, labels, scores) -> "BinaryCurves":
        from sklearn.metrics import precision_recall_curve, roc_curve
        labels = np.asarray(labels).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        return cls(fpr, tpr, precision, recall, thresholds)

    def auroc(self) -> float:
        from sklearn.metrics import auc
        return float(auc(self.fpr, self.tpr))

    def average_precision(self) -> float:
        """Step-wise AP, sum over thresholds of (R_n - R_n-1) P_n: average_precision_score's definition."""
        return float(-np.sum(np.diff(self.recall) * self.precision[:-1]))

    def f1_max(self) -> float:
        """Max over the precision-recall curve of 2PR/(P+R), ignoring points where P+R = 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = 2 * self.precision * self.recall / (self.precision + self.recall)
        return float(np.max(f1[np.isfinite(f1)]))

    def f1_optimal_threshold(self) -> float:
        """The score threshold at the F1-max point (scores >= threshold are flagged)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = 2 * self.precision[:-1] * self.recall[:-1] / (self.precision[:-1] + self.recall[:-1])
        return float(self.pr_thresholds[int(np.argmax(np.where(np.isfinite(f1), f1, -1)))])


def _binary_metrics(labels, scores, curves: BinaryCurves | None = None) -> tuple[float, float, float]:
    """(AUROC, F1-max, AP), or zeros when only one class is present (as the reference)."""
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return 0.0, 0.0, 0.0
    curves = curves or BinaryCurves.of(labels, scores)
    return curves.auroc(), curves.f1_max(), curves.average_precision()


PIXEL_CHUNK = 1 << 18  # distinct pixel scores taken at a time when the pixel curves are walked


def _floor_keys(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 thresholds as keys of a sorted array of ``dtype`` that count the same elements with
    ``np.searchsorted(array, keys, side="right")`` (values <= each threshold): the largest value of
    ``dtype`` at most each. numpy would otherwise convert the whole array to float64 (8 bytes a
    pixel) to compare."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if np.dtype(dtype) == np.float64:
        return thresholds
    keys = thresholds.astype(dtype)
    return np.where(keys.astype(np.float64) > thresholds, np.nextafter(keys, np.asarray(-np.inf, dtype)), keys)


@dataclass(frozen=True)
class PixelCurves:
    """The pixel metrics of a set of maps and masks, and thinned ROC/PR curves for the figures,
    computed in one walk down the distinct scores from each label's sorted scores: about 5 bytes a
    pixel (float32 maps) beside the maps, where scikit-learn's curves over every pixel take some 100
    (a sort index, float64 copies, every distinct score's curve points); the same values as
    ``BinaryCurves`` over the pixels (AUROC exact in integers, F1-max and its threshold the same
    bits, AP and the MVTec AUPRO summed in another order: within 1e-12) and as the reference's PRO
    curve (docs/METHOD.md section 7)."""
    n_positive: int
    n_negative: int
    fpr: np.ndarray         # thinned ROC (at most about 2000 points, the ends kept), for the figures
    tpr: np.ndarray
    precision: np.ndarray   # thinned PR curve, scikit-learn's order (recall falling to 0, precision 1 there)
    recall: np.ndarray
    values: dict            # "auroc", "ap", "f1_max", "f1_threshold", "aupro_mvtec"
    pro: tuple              # the reference's PRO curve: (thresholds, fpr, pro)

    @classmethod
    def of(cls, masks, maps, images=None, fpr_limit: float = PRO_FPR_LIMIT, chunk: int = PIXEL_CHUNK,
           points: int = 2000) -> "PixelCurves":
        """``masks``, ``maps``: (N, [1,] S, S) arrays, or sequences that read an image per index and
        say their ``shape`` and ``dtype`` (a stored artifact's maps); ``images``: which of the N count
        (default all), read one image at a time (no copy of the N maps is made)."""
        masks, maps = _per_image(masks), _per_image(maps)
        images = range(len(maps)) if images is None else images
        dtype = maps.dtype if maps.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        pixels = _SplitPixels.of(masks, maps, images, dtype)
        return cls(pixels.positive.size, pixels.negative.size, *_walk(pixels, fpr_limit, chunk, points),
                   pixels.pro_curve())

    def auroc(self) -> float:
        return self.values["auroc"]

    def average_precision(self) -> float:
        return self.values["ap"]

    def f1_max(self) -> float:
        return self.values["f1_max"]

    def f1_optimal_threshold(self) -> float:
        """The score threshold at the F1-max point (the lowest such, as ``BinaryCurves``)."""
        return self.values["f1_threshold"]

    def aupro_mvtec(self) -> float:
        """AUPRO as MVTec AD and anomalib define it: every distinct threshold, the curve interpolated
        at FPR = the limit, the area divided by the limit."""
        return self.values["aupro_mvtec"]

    def aupro_reference(self) -> float:
        """AUPRO as the reference computes it: FPR < 0.3 kept, min-max rescaled to [0, 1], trapezoid."""
        from sklearn.metrics import auc
        _, fpr, pro = self.pro
        kept = fpr < PRO_FPR_LIMIT
        fpr, pro = fpr[kept], pro[kept]
        fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
        return float(auc(fpr, pro))


def _per_image(stack):
    """(N, [1,] S, S) values as N images of (S, S): an array reshaped, or a sequence that reads one
    image per index (it has a ``shape``) as it is."""
    if hasattr(stack, "shape") and hasattr(stack, "__getitem__") and not hasattr(stack, "__array__"):
        return stack  # a reader of stored images (arrays and tensors have __array__: made an array below)
    stack = np.asarray(stack)
    return stack.reshape(-1, *stack.shape[-2:])


@dataclass(frozen=True)
class _SplitPixels:
    """Each label's pixel scores sorted ascending, the defect pixels' PRO weights (1 / (their region's
    size x the number of regions)) in the same order, and each region's share above the reference's
    PRO thresholds."""
    negative: np.ndarray
    positive: np.ndarray
    weight: np.ndarray
    thresholds: np.ndarray
    overlaps: list

    @classmethod
    def of(cls, masks, maps, images, dtype) -> "_SplitPixels":
        from skimage.measure import label as label_components
        images = list(images)
        n_positive = sum(int(np.count_nonzero(masks[i])) for i in images)
        n_negative = len(images) * int(np.prod(masks.shape[1:])) - n_positive  # (stored masks: not read again)
        negative, positive = np.empty(n_negative, dtype), np.empty(n_positive, dtype)
        sizes = np.empty(n_positive, np.int64)  # each defect pixel's region size
        extremes = [(float(values.min()), float(values.max())) for values in (maps[i] for i in images)]
        low, high = min((e[0] for e in extremes), default=0.0), max((e[1] for e in extremes), default=0.0)
        thresholds = np.arange(low, high, (high - low) / PRO_THRESHOLDS) if n_positive and high > low else np.array([low])
        overlaps, at_negative, at_positive = [], 0, 0
        for i in images:
            mask, values = masks[i].astype(bool), maps[i].astype(dtype, copy=False)
            normal = values[~mask]
            negative[at_negative:at_negative + normal.size] = normal
            at_negative += normal.size
            if not mask.any():
                continue
            labelled = label_components(mask.astype(np.uint8))  # 8-connected regions
            region_sizes = np.bincount(labelled.ravel())
            inside = labelled[mask]
            positive[at_positive:at_positive + inside.size] = values[mask]
            sizes[at_positive:at_positive + inside.size] = region_sizes[inside]
            at_positive += inside.size
            order = np.argsort(inside, kind="stable")
            bounds = np.searchsorted(inside[order], np.arange(1, labelled.max() + 2))
            region_values = values[mask].astype(np.float64)[order]
            for start, stop in zip(bounds[:-1], bounds[1:]):
                region = np.sort(region_values[start:stop])
                overlaps.append((region.size - np.searchsorted(region, thresholds, side="right")) / region.size)
        negative.sort()
        order = np.argsort(positive, kind="stable")
        weight = 1.0 / (sizes[order] * len(overlaps)) if overlaps else np.zeros(0)
        return cls(negative, positive[order], weight, thresholds, overlaps)

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference's PRO curve: (thresholds, FPR, PRO) at 200 thresholds over [min, max)."""
        if not self.overlaps or not self.negative.size:
            return self.thresholds, np.zeros(self.thresholds.size), np.zeros(self.thresholds.size)
        normal = self.negative
        fpr = (normal.size - np.searchsorted(normal, _floor_keys(self.thresholds, normal.dtype), side="right")
               ) / normal.size
        return self.thresholds, fpr, np.mean(self.overlaps, axis=0)

    def chunks(self, size: int):
        """(thresholds, TP, FP) at every distinct score from the highest down, ``size`` or so at a time:
        the counts of defect and normal pixels scoring at least each threshold."""
        negative, positive = self.negative, self.positive
        top_n, top_p = negative.size, positive.size  # what is above the chunks walked so far
        while top_n or top_p:
            bound = max(negative[top_n - size] if top_n > size else -np.inf,
                        positive[top_p - size] if top_p > size else -np.inf)
            low_n = int(np.searchsorted(negative, bound, side="left")) if bound > -np.inf else 0
            low_p = int(np.searchsorted(positive, bound, side="left")) if bound > -np.inf else 0
            thresholds = np.unique(np.concatenate([negative[low_n:top_n], positive[low_p:top_p]]))[::-1]
            yield (thresholds, positive.size - np.searchsorted(positive, thresholds, side="left"),
                   negative.size - np.searchsorted(negative, thresholds, side="left"))
            top_n, top_p = low_n, low_p


def _walk(pixels: _SplitPixels, fpr_limit: float, chunk: int, points: int):
    """One walk down the distinct scores: thinned ROC and PR curves and the metrics (see PixelCurves).
    Each step does what scikit-learn's curves and ``BinaryCurves`` do to the same points."""
    n_pos, n_neg = pixels.positive.size, pixels.negative.size
    suffix_weight = np.r_[np.cumsum(pixels.weight[::-1])[::-1], 0.0]  # PRO of the defect pixels from each on up
    stride = max(1, -(-(n_pos + n_neg) // points))
    roc, pr = [(0.0, 0.0)], []
    twice_auc, ap, best, best_at, area, seen = 0, 0.0, -1.0, math.nan, 0.0, 0
    last_tp, last_fp, last_recall, last_fpr, last_pro, pro_open = 0, 0, 0.0, 0.0, 0.0, True
    for thresholds, tp, fp in pixels.chunks(chunk):
        tp, fp = tp.astype(np.int64), fp.astype(np.int64)
        before_tp, before_fp = np.r_[last_tp, tp[:-1]], np.r_[last_fp, fp[:-1]]
        twice_auc += int(np.sum((fp - before_fp) * (tp + before_tp)))
        precision = tp / (tp + fp)
        recall = tp / n_pos if n_pos else np.ones(tp.size)
        ap += float(np.sum(np.diff(np.r_[last_recall, recall]) * precision))
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = 2 * precision * recall / (precision + recall)
        f1 = np.where(np.isfinite(f1), f1, -1)
        peak = int(f1.size - 1 - np.argmax(f1[::-1]))  # the lowest threshold of the chunk's best
        if f1[peak] >= best:
            best, best_at = float(f1[peak]), float(thresholds[peak])
        if pro_open and n_neg:
            fpr = fp / n_neg
            pro = suffix_weight[np.searchsorted(pixels.positive, thresholds, side="left")]
            xs, ys = np.r_[last_fpr, fpr], np.r_[last_pro, pro]
            kept = int(np.searchsorted(xs, fpr_limit, side="right"))  # the points at most the limit
            area += float(np.sum(np.diff(xs[:kept]) * (ys[1:kept] + ys[:kept - 1]) / 2.0))
            if kept < xs.size:  # the curve crosses the limit here: interpolated there, and closed
                if xs[kept - 1] < fpr_limit:
                    at_limit = np.interp(fpr_limit, xs[kept - 1:kept + 1], ys[kept - 1:kept + 1])
                    area += (fpr_limit - xs[kept - 1]) * (at_limit + ys[kept - 1]) / 2.0
                pro_open = False
            last_fpr, last_pro = float(fpr[-1]), float(pro[-1])
        shown = np.flatnonzero((seen + np.arange(tp.size)) % stride == 0)
        roc.extend(zip(fp[shown] / max(n_neg, 1), tp[shown] / max(n_pos, 1)))
        pr.extend(zip(precision[shown], recall[shown]))
        seen += tp.size
        last_tp, last_fp, last_recall = int(tp[-1]), int(fp[-1]), float(recall[-1])
        last_point = (float(precision[-1]), float(recall[-1]))
    if seen and (seen - 1) % stride:
        roc.append((last_fp / max(n_neg, 1), last_tp / max(n_pos, 1)))
        pr.append(last_point)
    pr = pr[::-1] + [(1.0, 0.0)]
    values = {"auroc": twice_auc / (2 * n_pos * n_neg) if n_pos and n_neg else 0.0, "ap": ap,
              "f1_max": max(best, 0.0), "f1_threshold": best_at, "aupro_mvtec": float(area / fpr_limit)}
    fpr, tpr = (np.array(axis) for axis in zip(*roc))
    precision, recall = (np.array(axis) for axis in zip(*pr))
    return fpr, tpr, precision, recall, values


def image_metrics(gt_sp, pr_sp, curves: BinaryCurves | None = None) -> dict[str, float]:
    """Image AUROC, F1-max and AP (fractions; zeros with one class, as the reference)."""
    gt_sp = np.asarray(gt_sp).ravel()
    pr_sp = np.asarray(pr_sp, dtype=np.float64).ravel()
    if gt_sp.shape != pr_sp.shape:
        raise ValueError(f"pr_sp: {pr_sp.shape[0]} image scores for {gt_sp.shape[0]} labels")
    return dict(zip(METRIC_NAMES[:3], _binary_metrics(gt_sp, pr_sp, curves)))


def pixel_metrics(gt_px, pr_px, curves: "PixelCurves | None" = None) -> dict[str, float]:
    """Pixel AUROC, F1-max, AP, the reference AUPRO and the MVTec AUPRO (zeros with one class of
    pixels, as the reference). ``curves``: ``PixelCurves.of(gt_px, pr_px)`` if known."""
    if np.shape(gt_px) != np.shape(pr_px):  # their shapes (a stored stack of maps is not read)
        raise ValueError(f"pr_px: shape {np.shape(pr_px)} does not match gt_px {np.shape(gt_px)}")
    curves = curves or PixelCurves.of(gt_px, pr_px)
    if not curves.n_positive or not curves.n_negative:
        return dict.fromkeys(METRIC_NAMES[3:], 0.0)
    return dict(zip(METRIC_NAMES[3:], (curves.auroc(), curves.f1_max(), curves.average_precision(),
                                       curves.aupro_reference(), curves.aupro_mvtec())))


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's PRO curve: 200 thresholds over [min, max), FPR and PRO at each. masks, maps:
    (N, S, S). B = map > threshold; PRO = mean over regions of |B & region|/|region|; FPR =
    |B & normal| / |normal|, over all pixels."""
    return PixelCurves.of(masks, maps).pro


def aupro_reference(masks, maps) -> float:
    """AUPRO as the reference computes it (``PixelCurves.aupro_reference``)."""
    return PixelCurves.of(masks, maps).aupro_reference()


def aupro_mvtec(masks, maps, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """AUPRO as MVTec AD and anomalib define it (``PixelCurves.aupro_mvtec``)."""
    return PixelCurves.of(masks, maps, fpr_limit=fpr_limit).aupro_mvtec()


def compute_metrics(gt_sp, pr_sp, gt_px, pr_px) -> dict[str, float]:
    """The seven reference metrics and the MVTec-style AUPRO, as fractions.

    gt_sp, pr_sp: (N,) image labels and scores; gt_px: (N, [1,] S, S) binary masks; pr_px: maps
    of the same shape.
    """
    return {**image_metrics(gt_sp, pr_sp), **pixel_metrics(gt_px, pr_px)}
