"""The line, per new part: its LNAMD features, made with a reference pool's backbone and settings.

One artifact per part, keyed by the SHA-256 of its image file and the pool's feature settings (not
by the pool itself: a part is forwarded through the backbone once in its life, and the pool's
additions read its features from here). The part is decoded once: the artifact keeps its picture at
the resolution its overlay is drawn at, so the outputs never read the image file again.

The part is forwarded alone (a batch of its own; tiled: its tiles, a few at a time), so its
features are the same, bit for bit, whichever parts arrive with it.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from .building import NotBuilt, Plan
from .faults import note_work
from .key import StageKey

TILE_BATCH = 4  # tiles of one part forwarded at once


def settings_of(pool) -> dict:
    """What decides a part's features (``PoolFile.settings``): the feature settings the pool's images
    were made with, its degrees and, tiled, the parts' size."""
    settings = pool.settings
    return {**settings.features, "r_list": [int(r) for r in settings.r_list],
            **({"part_size": [int(n) for n in settings.part_size]} if settings.part_size is not None else {})}


def plans(run) -> list[Plan]:
    from ..reference_pool.pool import open_pool
    pool = open_pool(run.pool["path"], run.pool["digest"])
    return [plan(part, pool, run.artifacts, run.device, run.models) for part in run.parts]


def plan(part, pool, artifacts: str, device: str = "auto", models: tuple[str, ...] = ()) -> Plan:
    key = StageKey("features", settings_of(pool), {"image": part.digest})
    path = store.artifact_path(artifacts, store.catalog.LINE, pool.settings.category, "features", key.value)
    return Plan(key, str(path), f"features {Path(part.path).name}", Needs(part, pool.ref(), device, tuple(models)), build,
                subject=part.digest)


@dataclass(frozen=True)
class Needs:
    part: object        # a graph.Part: its identity, file and names
    pool: dict          # PoolFile.ref(): path, identity, digest
    device: str = "auto"
    models: tuple[str, ...] = ()  # where the pool's model files may be now (pool_backbone)


@functools.lru_cache(maxsize=4)
def _backbone(pool_path: str, pool_digest: str, device: str, models: tuple[str, ...] = ()):
    """The pool's backbone (its model and weights files found by the pool's record of them),
    loaded once per process."""
    from ..inputs.backbones import backbone_for
    from ..reference_pool.pool import open_pool, pool_backbone
    settings = pool_backbone(open_pool(pool_path, pool_digest), device, models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backbone_for(settings)


def read_part(part, pool):
    """The part's picture (PIL), decoded once; NotBuilt naming the file when it cannot be read or
    is not of a tiled pool's parts' size."""
    import hashlib

    from ..inputs.images import UnreadableImage, load_image
    from ..method.tiling import TileSizeError
    try:
        data = Path(part.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != part.digest:
            raise NotBuilt(f"{part.path}: the file changed since this part was seen there (it holds another part "
                           "now); not scored again")
        picture = load_image(part.path, data)
        tiling = pool.settings.tiling
        if tiling is not None:
            tiling.check_size(picture, str(part.path), expected=f"the parts of the tiled pool {pool.path.name} have")
    except UnreadableImage as error:
        raise NotBuilt(str(error)) from None
    except TileSizeError as error:
        raise NotBuilt(f"{error}; {NOT_OF_THE_POOLS_SIZE}") from None
    except OSError as error:  # gone or unreadable since it was hashed
        raise NotBuilt(f"{part.path}: cannot be read ({error.strerror or error})") from None
    return picture


NOT_OF_THE_POOLS_SIZE = "not scored (a tiled pool cuts parts of its runs' size only)"


def overlay_shape(height: int, width: int, pool) -> tuple[int, int]:
    """(rows, columns) of the map as its overlay draws it: S x S untiled; tiled, the part's full
    resolution reduced as the batch's evaluation reduces it (at most about 1024 x 1024 pixels)."""
    if pool.settings.tiling is None:
        return pool.settings.image_size, pool.settings.image_size
    from ..outputs.evaluation import evaluation_reduction
    factor = evaluation_reduction(height, width)
    return -(-height // factor), -(-width // factor)


def build(path: Path, plan: Plan) -> None:
    import torch

    from ..method.lnamd import aggregate
    from ..reference_pool.pool import open_pool
    from .extract import forward
    part, reference = plan.needs.part, plan.needs.pool
    pool = open_pool(reference["path"], reference["digest"])
    picture = read_part(part, pool)
    backbone = _backbone(reference["path"], reference["digest"], plan.needs.device, plan.needs.models)
    tiling = pool.settings.tiling
    tokens = forward(backbone, [picture] if tiling is None else [(picture, str(part.path))], tiling, TILE_BATCH)[0]
    note_work("forward")
    rows, columns = overlay_shape(picture.height, picture.width, pool)
    shown = np.asarray(picture.resize((columns, rows)), dtype=np.uint8)
    with torch.no_grad():
        arrays = {f"features_r{r}": np.stack([aggregate(layer_tokens, r).numpy() for layer_tokens in tokens])
                  for r in pool.settings.r_list}
    store.write_artifact(path, "features", plan.key.config, plan.key.inputs, {**arrays, "picture": shown},
                         attrs={"size": [picture.height, picture.width], "backbone": backbone.describe()},
                         code_version=plan.key.code_version)

