"""What a run holds in memory does not grow with its images: the extract stage merges its batches
one at a time (the pixel metrics' share: tests/test_pixel_metrics.py)."""
import tracemalloc

import numpy as np
import pytest

from conftest import TINY_CONFIG
from musc import store
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import load_category
from musc.stages import Run, extract
from musc.stages.building import ensure


def test_extract_merges_its_batches_one_at_a_time(tmp_path, monkeypatch):
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", n_good=56, n_per_defect=1, size=64, seed=2, categories=("fabric",))
    settings = {**TINY_CONFIG, "image_size": 128, "batch_size": 2}  # 0.4 MB of tokens an image, 23 MB in all
    run = Run(load_category("mvtec_ad", data, "fabric"), MuscConfig(**settings), str(tmp_path / "artifacts"))
    plan = extract.plans(run)[0]
    n_batches = -(-len(run.images.samples) // settings["batch_size"])

    def stop_after_the_last_batch(stage, done):
        if done == n_batches:
            raise RuntimeError("stopped before the merge")
    monkeypatch.setattr(extract, "fault_point", stop_after_the_last_batch)
    with pytest.raises(RuntimeError, match="before the merge"):
        ensure(plan)
    assert len(list(store.parts_dir(plan.path).glob("batch_*.h5"))) == n_batches
    monkeypatch.undo()
    tracemalloc.start()  # numpy's arrays are traced; the merge is all that is left to do
    try:
        ref, reused = ensure(plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not reused
    tokens = store.open_artifact(ref["path"]).shape("tokens")
    every_image = int(np.prod(tokens)) * 4
    assert peak < every_image / 2, (peak, every_image)  # a batch and the hashing's 4 MB reads (all of them before)
