"""The line, per new part: its scores against a reference pool only, its anomaly map and score.

The part's features vote against the pool's images and nothing else, averaged over the rank window
of a set of the pool and the part: the score it would get in one batch made of the pool and itself
(docs/METHOD.md section 4), whichever parts arrive with it. Keyed by the part's features and the
pool's content digest: a pool that changed (an addition, a removal) scores its parts again.

Parts are built a chunk at a time (``build_many``): the pool is read block by block once for the
chunk, and each part's rows vote on their own, so a part's artifact is the same, bit for bit,
whichever chunk it was built in (a retry after a crash builds other chunks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from .building import Plan, built
from .faults import fault_point, note_work
from .key import Ref, StageKey


def plans(run, features: list[Ref]) -> list[Plan]:
    from ..reference_pool.pool import open_pool
    pool = open_pool(run.pool["path"], run.pool["digest"])
    top_k = getattr(run.rule, "pool_top_k", None)
    return [plan(ref, pool, top_k) for ref in features if built(ref)]


def plan(features: Ref, pool, top_k: int | None = None) -> Plan:
    """``top_k``: the part against its k nearest pool images only (retrieval, ``pool_top_k``): it
    enters the key when set, so exact and retrieved scores never share an artifact."""
    config = {**pool.settings.score.recorded(), "image_size": pool.settings.image_size,
              **({"pool_top_k": int(top_k)} if top_k is not None else {})}
    key = StageKey("pool_score", config, {"features": features["digest"], "pool": pool.digest})
    return Plan(key, str(key.beside(features)), "pool score", Needs(features, pool.ref(), top_k), build, build_many,
                subject=features["part"])


@dataclass(frozen=True)
class Needs:
    features: Ref
    pool: dict          # PoolFile.ref(): path, identity, digest
    top_k: int | None = None  # pool_top_k: against the k nearest pool images only (None: all)


def build(path: Path, plan: Plan) -> None:
    build_many([(path, plan)])


def build_many(items: list[tuple[Path, Plan]]) -> dict[str, str]:
    """The parts of ``items`` scored against the pool a chunk of rows at a time (the pool read once
    per chunk), each part's artifact written as soon as its chunk is scored."""
    import torch

    from ..reference_pool.pool import open_pool
    from ..reference_pool.retrieval import embedding_of, nearest
    from ..reference_pool.scoring import part_maps
    reference, top_k = items[0][1].needs.pool, items[0][1].needs.top_k
    pool = open_pool(reference["path"], reference["digest"])
    settings = pool.settings
    per_part = settings.tiles_per_image
    done = 0
    for start, stop in settings.chunks(len(items)):
        chunk = items[start:stop]
        features = [_features_of(plan.needs.features, settings.r_list) for _, plan in chunk]  # each file read once
        chosen = nearest(pool, np.stack([embedding_of(part, settings) for part in features]), top_k) \
            if top_k is not None else None
        per_degree = []
        for r in settings.r_list:
            layers = []
            for layer in range(len(settings.layers)):
                rows = torch.from_numpy(np.concatenate([part[r][layer] for part in features]))
                layers.append(pool.score(rows, r, layer, chosen))
            per_degree.append(torch.stack(layers))  # (layers, rows, L)
        for index, (path, plan) in enumerate(chunk):
            mine = [degree[:, index * per_part:(index + 1) * per_part] for degree in per_degree]
            maps, scores = part_maps(mine, settings.image_size, settings.tiling)
            anomaly_map = maps[0]
            store.write_artifact(
                path, "pool_score", plan.key.config, plan.key.inputs,
                {"patch_scores": torch.stack(mine).numpy(), "map": anomaly_map.astype(np.float32),
                 "score": np.float64(scores[0])},
                attrs={"pool_id": pool.id, "pool_size": len(pool), "map_min": float(anomaly_map.min()),
                       "map_max": float(anomaly_map.max())},
                code_version=plan.key.code_version)
            note_work("build pool_score")
            done += 1
            fault_point("pool_score", done)
    return {}


def _features_of(ref: Ref, r_list) -> dict[int, np.ndarray]:
    """A part's features artifact (checked against its digest), every degree read in one opening."""
    import h5py
    artifact = store.open_artifact(ref["path"], "features", ref["digest"])
    with h5py.File(artifact.path, "r") as f:
        return {int(r): f[f"features_r{int(r)}"][()] for r in r_list}
