"""Stage 4, classify: anomaly maps (mean over layers and degrees, upsampled) and image scores
before and after RsCIN."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from musc import store

from .faults import fault_point
from .stage import Plan, Ref, code_version, stage_folder, stage_task

IMAGES_PER_CHUNK = 32


def plan_classify(extract: Ref, scores: list[Ref], k_list: list[int]) -> Path:
    key = store.stable_hash(code_version("classify"), extract["digest"], [s["digest"] for s in scores],
                            [int(k) for k in k_list])
    return stage_folder(extract["path"], "classify") / f"{key}.h5"


def build_classify(path: Path, extract: Ref, scores: list[Ref], k_list: list[int]) -> None:
    from musc.method.maps import combine_patch_scores, image_scores_from_maps, upsample_maps
    from musc.method.rscin import rescore
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    image_size = int(source.config["image_size"])
    patch_map = combine_patch_scores([store.open_artifact(s["path"], "score", s["digest"]).read("scores")
                                      for s in scores]).numpy()
    raw = np.empty(patch_map.shape[0])

    def fill(f: h5py.File) -> None:
        maps = f.create_dataset("maps", shape=(patch_map.shape[0], image_size, image_size), dtype="float64",
                                chunks=(1, image_size, image_size))
        for start in range(0, patch_map.shape[0], IMAGES_PER_CHUNK):
            chunk = upsample_maps(patch_map[start:start + IMAGES_PER_CHUNK], image_size)
            maps[start:start + chunk.shape[0]] = chunk.numpy()
            raw[start:start + chunk.shape[0]] = image_scores_from_maps(chunk)
        fault_point("classify", 1)
        f.create_dataset("image_scores_raw", data=raw)
        f.create_dataset("image_scores", data=rescore(raw, source.read("embeddings"), k_list))

    store.write_artifact(path, "classify", {"k_list": [int(k) for k in k_list], "image_size": image_size},
                         {"extract": extract["digest"], **{f"score_{i}": s["digest"] for i, s in enumerate(scores)}},
                         {"patch_map": patch_map}, code_version=code_version("classify"), fill=fill)


@stage_task("classify")
def classify_task(extract: Ref, scores: list[Ref], k_list: list[int]) -> Plan:
    return plan_classify(extract, scores, k_list), lambda p: build_classify(p, extract, scores, k_list)
