"""Image- and pixel-level metrics (docs/METHOD.md section 7).

``compute_metrics`` returns what the reference's ``compute_metrics`` returns (fractions; 0 where a
metric is undefined because only one class is present), plus the MVTec/anomalib AUPRO.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRIC_NAMES = ("image_auroc", "image_f1max", "image_ap",
                "pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "pixel_aupro_mvtec")
PRO_FPR_LIMIT = 0.3
PRO_THRESHOLDS = 200


def descending_order(scores) -> np.ndarray:
    """Indices that sort the flattened scores from high to low (the order within ties does not
    matter to anything computed from it: counts and sums are taken at the ends of ties)."""
    return np.argsort(np.asarray(scores, dtype=np.float64).ravel())[::-1]


@dataclass(frozen=True)
class BinaryCurves:
    """scikit-learn's ROC and precision-recall curves of one set of labels and scores, computed once:
    AUROC, AP and F1-max come from them (the values of roc_auc_score and average_precision_score,
    which compute the same curves internally), and so do the ROC/PR figures."""
    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pr_thresholds: np.ndarray

    @classmethod
    def of(cls, labels, scores, order: np.ndarray | None = None) -> "BinaryCurves":
        """``order``: ``descending_order(scores)`` if known. The labels and scores are handed to
        scikit-learn already sorted (its stable sort then finds nothing to do, and both curves share
        our one sort); 0/1 labels travel as bytes, so that checking them is cheap too."""
        from sklearn.metrics import precision_recall_curve, roc_curve
        labels = np.asarray(labels).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        ascending = (descending_order(scores) if order is None else order)[::-1]
        labels, scores = labels[ascending], scores[ascending]
        if labels.size and labels.min() >= 0 and labels.max() <= 1:
            labels = labels.astype(np.uint8, copy=False)
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


def _region_pixels(masks: np.ndarray, maps: np.ndarray) -> list[np.ndarray]:
    """Map values of every connected region (8-connected) of every image's mask."""
    from skimage.measure import label as label_components
    regions = []
    for mask, anomaly_map in zip(masks, maps):
        labelled = label_components(mask.astype(np.uint8))
        order = np.argsort(labelled.ravel(), kind="stable")
        sorted_labels = labelled.ravel()[order]
        bounds = np.searchsorted(sorted_labels, np.arange(1, labelled.max() + 2))
        values = anomaly_map.ravel()[order]
        regions.extend(values[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1))
    return regions


def pro_curve(masks, maps, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's PRO curve: 200 thresholds over [min, max), FPR and PRO at each.

    masks, maps: (N, S, S). B = map > threshold; PRO = mean over regions of |B & region|/|region|;
    FPR = |B & normal| / |normal|, over all pixels. ``order``: ``descending_order(maps)`` if known
    (then the normal pixels need no sort of their own).
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    maps = np.asarray(maps, dtype=np.float64)
    low, high = maps.min(), maps.max()
    thresholds = np.arange(low, high, (high - low) / PRO_THRESHOLDS)
    if order is None:
        normal = np.sort(maps[~masks])
    else:
        ranked = order[::-1]
        normal = maps.ravel()[ranked[~masks.ravel()[ranked]]]
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="right")) / normal.size
    overlaps = []
    for values in _region_pixels(masks, maps):
        values = np.sort(values)
        overlaps.append((values.size - np.searchsorted(values, thresholds, side="right")) / values.size)
    pro = np.mean(overlaps, axis=0)
    return thresholds, fpr, pro


def aupro_reference(masks, maps, order: np.ndarray | None = None) -> float:
    """AUPRO as the reference computes it: FPR < 0.3 kept, min-max rescaled to [0, 1], trapezoid."""
    _, fpr, pro = pro_curve(masks, maps, order)
    kept = fpr < PRO_FPR_LIMIT
    fpr, pro = fpr[kept], pro[kept]
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    from sklearn.metrics import auc
    return float(auc(fpr, pro))


def aupro_mvtec(masks, maps, fpr_limit: float = PRO_FPR_LIMIT, order: np.ndarray | None = None) -> float:
    """AUPRO as MVTec AD and anomalib define it: every distinct threshold, the curve interpolated at
    FPR = fpr_limit, the area divided by fpr_limit. ``order``: ``descending_order(maps)`` if known."""
    from skimage.measure import label as label_components
    masks = np.asarray(masks).astype(bool, copy=False)
    maps = np.asarray(maps, dtype=np.float64)
    regions = [label_components(m.astype(np.uint8)) for m in masks]
    n_regions = sum(int(r.max()) for r in regions)
    weights = np.zeros(maps.shape, dtype=np.float64)
    for image, labelled in enumerate(regions):
        sizes = np.bincount(labelled.ravel())
        inside = labelled > 0
        weights[image][inside] = 1.0 / (sizes[labelled[inside]] * n_regions)
    order = descending_order(maps) if order is None else order
    values = maps.ravel()[order]
    pro = np.cumsum(weights.ravel()[order])
    fpr = np.cumsum(~masks.ravel()[order]) / np.count_nonzero(~masks)
    last_of_tie = np.r_[np.nonzero(np.diff(values))[0], values.size - 1]
    fpr = np.r_[0.0, fpr[last_of_tie]]
    pro = np.r_[0.0, pro[last_of_tie]]
    below = fpr <= fpr_limit
    fpr_kept, pro_kept = fpr[below], pro[below]
    if fpr_kept[-1] < fpr_limit and below.sum() < fpr.size:
        nxt = below.sum()
        pro_at_limit = np.interp(fpr_limit, fpr[nxt - 1:nxt + 1], pro[nxt - 1:nxt + 1])
        fpr_kept, pro_kept = np.r_[fpr_kept, fpr_limit], np.r_[pro_kept, pro_at_limit]
    return float(np.trapezoid(pro_kept, fpr_kept) / fpr_limit)


def image_metrics(gt_sp, pr_sp, curves: BinaryCurves | None = None) -> dict[str, float]:
    """Image AUROC, F1-max and AP (fractions; zeros with one class, as the reference)."""
    gt_sp = np.asarray(gt_sp).ravel()
    pr_sp = np.asarray(pr_sp, dtype=np.float64).ravel()
    if gt_sp.shape != pr_sp.shape:
        raise ValueError(f"pr_sp: {pr_sp.shape[0]} image scores for {gt_sp.shape[0]} labels")
    return dict(zip(METRIC_NAMES[:3], _binary_metrics(gt_sp, pr_sp, curves)))


def pixel_metrics(gt_px, pr_px, curves: BinaryCurves | None = None, order: np.ndarray | None = None
                  ) -> dict[str, float]:
    """Pixel AUROC, F1-max, AP, the reference AUPRO and the MVTec AUPRO (zeros without defects).
    ``order``: ``descending_order(pr_px)`` if known (one sort of the pixels serves everything)."""
    gt_px = np.asarray(gt_px).astype(bool, copy=False)
    pr_px = np.asarray(pr_px, dtype=np.float64)  # converted once: every step below takes it as it is
    if gt_px.shape != pr_px.shape:
        raise ValueError(f"pr_px: shape {pr_px.shape} does not match gt_px {gt_px.shape}")
    order = descending_order(pr_px) if order is None else order
    if curves is None and gt_px.min() != gt_px.max():
        curves = BinaryCurves.of(gt_px, pr_px, order)
    pixel = _binary_metrics(gt_px, pr_px, curves)
    if gt_px.sum() == 0:
        aupro, aupro_std = 0.0, 0.0
    else:
        masks = gt_px.reshape(-1, *gt_px.shape[-2:])
        maps = pr_px.reshape(masks.shape)
        aupro, aupro_std = aupro_reference(masks, maps, order), aupro_mvtec(masks, maps, order=order)
    return dict(zip(METRIC_NAMES[3:], (*pixel, aupro, aupro_std)))


def compute_metrics(gt_sp, pr_sp, gt_px, pr_px) -> dict[str, float]:
    """The seven reference metrics and the MVTec-style AUPRO, as fractions.

    gt_sp, pr_sp: (N,) image labels and scores; gt_px: (N, [1,] S, S) binary masks; pr_px: maps
    of the same shape.
    """
    return {**image_metrics(gt_sp, pr_sp), **pixel_metrics(gt_px, pr_px)}
