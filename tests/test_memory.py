"""What a run holds in memory does not grow with its images: the extract stage merges its batches
one at a time (the pixel metrics' share: tests/test_pixel_metrics.py)."""
import tracemalloc
from pathlib import Path

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


ROW_SCRIPT = """
import resource, sys
import numpy as np, torch
from musc.method.msm import block_votes, reduce_votes
n_images, block, shape = int(sys.argv[1]), 8, (4, 8, 256)  # a row of the demo grid: 4 layers, 8 images, L = 256
n_blocks = n_images // block

def votes_of(first, second):  # a tile's votes, made when asked for (as the score stage reads its parts)
    rng = np.random.default_rng(first * n_blocks + second)
    piece = lambda: torch.from_numpy(rng.random((shape[0], block, block, shape[2]), dtype=np.float32))
    return piece(), piece()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scores = reduce_votes(block_votes(0, n_blocks, votes_of, n_images=n_images), 10, 20, overwrite=True)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, float(scores.sum()))
"""


def test_a_block_row_is_reduced_holding_its_votes_once():
    """The score stage reduces each block row as its tiles finish; its votes (32 KB an image at the
    demo grid, 65 MB at N = 2,000, two rows at once on two threads) are joined as they are read and
    partially sorted in place: the row is held once, not three times (its pieces, their join and a
    sorted copy)."""
    import subprocess
    import sys
    n_images = 2000
    out = subprocess.run([sys.executable, "-c", ROW_SCRIPT, str(n_images)], capture_output=True, text=True, check=True)
    grown, total = out.stdout.split()
    row = 4 * 8 * n_images * 256 * 4
    assert np.isfinite(float(total))
    assert int(grown) < 1.4 * row, (int(grown), row)


def test_reducing_votes_in_place_gives_the_same_scores():
    import torch
    from musc.method.msm import block_votes, reduce_votes
    rng = np.random.default_rng(5)
    tiles = {(i, j): (torch.from_numpy(rng.random((3, 4, 4, 6), dtype=np.float32)),
                      torch.from_numpy(rng.random((3, 4, 4, 6), dtype=np.float32))) for i in range(5) for j in range(i, 5)}
    joined = block_votes(2, 5, lambda i, j: tiles[i, j])
    filled = block_votes(2, 5, lambda i, j: tiles[i, j], n_images=20)
    assert torch.equal(joined, filled)
    copied = reduce_votes(joined, 3, 9)
    assert torch.equal(joined, filled)  # left as it was
    assert torch.equal(reduce_votes(filled, 3, 9, overwrite=True), copied)
    assert not torch.equal(joined, filled)  # reordered in place
    with pytest.raises(ValueError, match="n_images"):
        block_votes(2, 5, lambda i, j: tiles[i, j], n_images=21)


def test_evaluating_holds_one_map_at_a_time_and_gives_the_same_outputs(reference_run, tmp_path, monkeypatch):
    """The evaluate stage reads the classify artifact's maps an image at a time (2,000 images at 128 px
    are 262 MB of float64) for the metrics, the pictures, the binary masks and the defect pixel
    counts; every output is what the maps held in memory give."""
    import dataclasses
    import weakref
    from musc.outputs import evaluation, reports
    result, _ = reference_run
    extract = store.open_artifact(result["extract"]["path"])
    classify = store.open_artifact(result["classify"]["path"])
    settings = store.open_artifact(result["evaluate"]["path"]).config
    alive, most = set(), [0]
    read = evaluation.StoredImages.__getitem__

    def counted(self, index):
        image = read(self, index)
        if self.name != "maps":
            return image
        alive.add(id(image))
        weakref.finalize(image, alive.discard, id(image))
        most[0] = max(most[0], len(alive))
        return image
    monkeypatch.setattr(evaluation.StoredImages, "__getitem__", counted)
    stored, _ = reports.evaluate_into(tmp_path / "stored", extract, classify, settings)
    n_images = classify.shape("maps")[0]
    assert n_images >= 12 and 1 <= most[0] <= 4, (most[0], n_images)  # the metrics' thread, the pictures' keys and two drawing threads
    monkeypatch.undo()

    held = evaluation.EvaluationInputs.read(extract, classify)
    monkeypatch.setattr(evaluation.EvaluationInputs, "read", classmethod(
        lambda cls, e, c: dataclasses.replace(held, maps=np.stack(list(held.maps)), masks=np.stack(list(held.masks)))))
    in_memory, _ = reports.evaluate_into(tmp_path / "held", extract, classify, settings)
    assert stored.metrics == in_memory.metrics and stored.pixel_threshold == in_memory.pixel_threshold
    assert stored.per_image.equals(in_memory.per_image)
    for name in ("binary_masks", "overlays", "thumbs"):
        files = sorted(p.name for p in (tmp_path / "stored" / name).iterdir())
        assert files and files == sorted(p.name for p in (tmp_path / "held" / name).iterdir())
        assert all((tmp_path / "stored" / name / f).read_bytes() == (tmp_path / "held" / name / f).read_bytes()
                   for f in files), name


def test_a_removed_part_leaves_no_digest_behind(tmp_path, fresh_process_memory):
    """The store remembers each digest it wrote or verified; the score stage writes and removes some
    190,000 tile parts at N = 2,000, so a removed part (or a removed parts folder) is forgotten."""
    from musc.store import verification
    artifact = tmp_path / "score" / "0123456789abcdef.h5"
    before = len(verification._verified)
    for index in range(20):
        store.write_part(artifact, f"tile_{index:02d}", {"votes": np.full(4, index, np.float32)})
    assert store.read_part(artifact, "tile_03", ("votes",))["votes"][0] == 3
    assert len(verification._verified) == before + 20  # written and read: remembered, hashed once
    for index in range(10):
        store.remove_artifact(store.part_path(artifact, f"tile_{index:02d}"))
    assert len(verification._verified) == before + 10
    store.write_part(artifact, "tile_00", {"votes": np.zeros(4, np.float32)})  # written again after removal
    assert store.read_part(artifact, "tile_00", ("votes",))["votes"][0] == 0
    store.clear_parts(artifact)
    assert len(verification._verified) == before
    assert store.read_part(artifact, "tile_15") is None


def test_large_stored_maps_are_walked_in_a_process_of_their_own(reference_run, monkeypatch):
    """Above ``PIXELS_APART`` pixels, the pixel metrics' walk (8 bytes a pixel) runs in a child process
    that imports neither torch nor Prefect and reads the maps and masks itself: the same curves and
    metrics as the walk in this process; a child that fails is one line naming the maps' file."""
    import json
    import subprocess
    import sys
    from musc.method.metrics import pixel_metrics
    from musc.outputs import evaluation
    result, _ = reference_run
    inputs = evaluation.EvaluationInputs.read(store.open_artifact(result["extract"]["path"]),
                                              store.open_artifact(result["classify"]["path"]))
    images = np.flatnonzero(evaluation.pixel_usable(inputs.labels, inputs.has_mask))
    here = evaluation.pixel_curves_of(inputs.masks, inputs.maps, images)
    started = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: started.append(a[0]) or real_run(*a, **k))
    monkeypatch.setattr(evaluation, "PIXELS_APART", 0)
    apart = evaluation.pixel_curves_of(inputs.masks, inputs.maps, images)
    assert started and "musc.outputs.pixel_walk" in started[0][-1] and "-I" in started[0]
    assert apart.values == here.values and here.values["auroc"] > 0.5
    for name in ("fpr", "tpr", "precision", "recall"):
        np.testing.assert_array_equal(getattr(apart, name), getattr(here, name))
    assert pixel_metrics(inputs.masks, inputs.maps, apart) == pixel_metrics(inputs.masks, inputs.maps, here)

    request = json.dumps({"masks": [inputs.masks.path, "masks"], "maps": [inputs.maps.path, "maps"],
                          "images": images.tolist()})
    check = "import runpy, sys; runpy.run_module('musc.outputs.pixel_walk', run_name='__main__'); " \
            "print(sorted({'torch', 'prefect'} & set(sys.modules)), file=sys.stderr)"
    child = real_run([sys.executable, "-c", check], input=request.encode(), capture_output=True, check=True)
    assert child.stderr.decode().strip().splitlines()[-1] == "[]"

    missing = evaluation.StoredImages(inputs.maps.path, "maps")
    missing.path = str(Path(inputs.maps.path).with_name("gone.h5"))
    with pytest.raises(RuntimeError, match="gone.h5: the pixel metrics' process failed"):
        evaluation.pixel_curves_of(inputs.masks, missing, images)
