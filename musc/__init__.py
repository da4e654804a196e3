"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring (Li et al., ICLR 2024).

The method as pure functions on arrays; no Prefect import anywhere in this package.
"""
from .config import ConfigError, MuscConfig
from .lnamd import aggregate, layer_norm_average
from .metrics import compute_metrics
from .msm import mutual_scores
from .rscin import rescore
from .scoring import image_scores_from_maps, score_images, upsample_maps

__version__ = "0.1.0"


def __getattr__(name):
    # The backbone pulls in open_clip and timm (slow imports): load it on first use.
    if name in ("load_backbone", "preprocess"):
        from . import backbone
        return getattr(backbone, name)
    raise AttributeError(f"module 'musc' has no attribute {name!r}")


__all__ = ["ConfigError", "MuscConfig", "aggregate", "layer_norm_average", "compute_metrics",
           "mutual_scores", "rescore", "score_images", "upsample_maps", "image_scores_from_maps",
           "load_backbone", "preprocess"]
