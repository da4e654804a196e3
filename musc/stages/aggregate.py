"""Stage 2, aggregate (one per degree r): LNAMD features of every layer, L2-normalised."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py

from .. import store
from .building import Plan
from .faults import fault_point
from .key import Ref, StageKey

IMAGES_PER_CHUNK = 16


def plans(run, extract: Ref) -> list[Plan]:
    return [plan(extract, r) for r in run.config.r_list]


@dataclass(frozen=True)
class Needs:
    extract: Ref
    r: int


def plan(extract: Ref, r: int) -> Plan:
    key = StageKey("aggregate", {"r": int(r)}, {"extract": extract["digest"]})
    return Plan(key, str(key.beside(extract)), f"aggregate r={int(r)}", Needs(extract, int(r)), build)


def build(path: Path, plan: Plan) -> None:
    import torch
    from ..method.lnamd import aggregate
    extract, r = plan.needs.extract, plan.needs.r
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    n_layers, n_images, n_tokens, channels = source.shape("tokens")

    def fill(f: h5py.File) -> None:
        features = f.create_dataset("features", shape=(n_layers, n_images, n_tokens - 1, channels),
                                    dtype="float32", chunks=(1, 1, n_tokens - 1, channels))
        for layer in range(n_layers):
            for start in range(0, n_images, IMAGES_PER_CHUNK):
                stop = min(start + IMAGES_PER_CHUNK, n_images)
                tokens = torch.from_numpy(source.read("tokens", (layer, slice(start, stop))))
                features[layer, start:stop] = aggregate(tokens, r).numpy()
            fault_point("aggregate", layer + 1)

    store.write_artifact(path, "aggregate", plan.key.config, plan.key.inputs, {},
                         code_version=plan.key.code_version, fill=fill)
