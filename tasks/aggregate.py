"""Stage 2, aggregate (one per degree r): LNAMD features of every layer, L2-normalised."""
from __future__ import annotations

from pathlib import Path

import h5py

from musc import store

from .faults import fault_point
from .stage import Plan, Ref, code_version, stage_folder, stage_task

IMAGES_PER_CHUNK = 16


def plan_aggregate(extract: Ref, r: int) -> Path:
    key = store.stable_hash(code_version("aggregate"), extract["digest"], int(r))
    return stage_folder(extract["path"], "aggregate") / f"{key}.h5"


def build_aggregate(path: Path, extract: Ref, r: int) -> None:
    import torch
    from musc.method.lnamd import aggregate
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    n_layers, n_images, n_tokens, channels = source.shape("tokens")

    def fill(f: h5py.File) -> None:
        features = f.create_dataset("features", shape=(n_layers, n_images, n_tokens - 1, channels),
                                    dtype="float32", chunks=(1, 1, n_tokens - 1, channels))
        for layer in range(n_layers):
            for start in range(0, n_images, IMAGES_PER_CHUNK):
                stop = min(start + IMAGES_PER_CHUNK, n_images)
                tokens = torch.from_numpy(source.read("tokens", (layer, slice(start, stop))))
                features[layer, start:stop] = aggregate(tokens, int(r)).numpy()
            fault_point("aggregate", layer + 1)

    store.write_artifact(path, "aggregate", {"r": int(r)}, {"extract": extract["digest"]}, {},
                         code_version=code_version("aggregate"), fill=fill)


@stage_task("aggregate")
def aggregate_task(extract: Ref, r: int) -> Plan:
    return plan_aggregate(extract, r), lambda p: build_aggregate(p, extract, r)
