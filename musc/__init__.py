"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring (Li et al., ICLR 2024).

The library, in four layers (no Prefect, no flows, no tasks anywhere in this package):

* ``musc.method``: the method, arrays in and arrays out (lnamd, msm + screening, maps, rscin,
  metrics, pipeline). docs/METHOD.md describes it.
* ``musc.inputs``: the run configuration and its settings objects, datasets, backbones.
* ``musc.store``: the HDF5 artifact store and its schema (docs/ARTIFACTS.md).
* ``musc.outputs``: evaluation (thresholds, decisions, metrics), figures and reports.

plus ``musc.reference_pool``, the service that scores new images against earlier ones.
"""
from .inputs.config import ConfigError, MuscConfig
from .method.lnamd import aggregate, layer_norm_average
from .method.maps import image_scores_from_maps, upsample_maps
from .method.metrics import compute_metrics
from .method.msm import mutual_scores
from .method.pipeline import score_images
from .method.rscin import rescore
from .store.schema import PACKAGE_VERSION as __version__


def __getattr__(name):
    # The backbone pulls in open_clip and timm (slow imports): load it on first use.
    if name in ("load_backbone", "preprocess"):
        from .inputs import backbones
        return getattr(backbones, name)
    raise AttributeError(f"module 'musc' has no attribute {name!r}")


__all__ = ["ConfigError", "MuscConfig", "aggregate", "layer_norm_average", "compute_metrics",
           "mutual_scores", "rescore", "score_images", "upsample_maps", "image_scores_from_maps",
           "load_backbone", "preprocess", "__version__"]
