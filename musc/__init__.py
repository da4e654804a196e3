"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring (Li et al., ICLR 2024).

The library, in four layers (no Prefect, no flows, no tasks anywhere in this package):

* ``musc.method``: the method, arrays in and arrays out (lnamd, msm + screening, maps, rscin,
  metrics, pipeline). docs/METHOD.md describes it.
* ``musc.inputs``: the run configuration and its settings objects, datasets, backbones.
* ``musc.store``: the HDF5 artifact store and its schema (docs/ARTIFACTS.md).
* ``musc.outputs``: evaluation (thresholds, decisions, metrics), figures and reports.

plus ``musc.reference_pool``, the service that scores new images against earlier ones.
"""
import importlib
import importlib.metadata

from .inputs.config import ConfigError, MuscConfig

try:
    __version__ = importlib.metadata.version("musc-flow")  # written once: pyproject.toml
except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "unknown"

# Loaded on first use: torch, open_clip, sklearn are slow imports that a cached rerun never needs.
_LAZY = {"aggregate": "method.lnamd", "layer_norm_average": "method.lnamd", "upsample_maps": "method.maps",
         "image_scores_from_maps": "method.maps", "compute_metrics": "method.metrics",
         "mutual_scores": "method.msm", "score_images": "method.pipeline", "rescore": "method.rscin",
         "load_backbone": "inputs.backbones", "preprocess": "inputs.backbones"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'musc' has no attribute {name!r}")


__all__ = ["ConfigError", "MuscConfig", "aggregate", "layer_norm_average", "compute_metrics",
           "mutual_scores", "rescore", "score_images", "upsample_maps", "image_scores_from_maps",
           "load_backbone", "preprocess", "__version__"]
