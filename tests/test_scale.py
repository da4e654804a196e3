"""Tiled MSM: the same scores for every tile size; the tile tasks on a Dask cluster."""
import numpy as np
import pytest
import torch

import musc
from conftest import TINY_CONFIG, assert_same_arrays, read_all
from musc.method.msm import reference_mutual_scores


@pytest.mark.parametrize("n_images", [7, 13])
def test_tiled_scores_equal_untiled_for_every_block_size(n_images):
    torch.manual_seed(n_images)
    features = torch.nn.functional.normalize(torch.randn(n_images, 49, 24), dim=-1)
    untiled = musc.mutual_scores(features)
    reference = reference_mutual_scores(features)
    np.testing.assert_allclose(untiled.numpy(), reference.numpy(), atol=1e-6, rtol=0)
    for block_size in (1, 2, 3, 5, n_images - 1, n_images + 4):
        tiled = musc.mutual_scores(features, block_size=block_size)
        np.testing.assert_allclose(tiled.numpy(), untiled.numpy(), atol=1e-6, rtol=0, err_msg=str(block_size))


def test_topmin_window_and_progress():
    features = torch.nn.functional.normalize(torch.randn(11, 16, 8), dim=-1)
    calls = []
    scores = musc.mutual_scores(features, 0.1, 0.5, block_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)  # 3 blocks -> 6 tiles
    np.testing.assert_allclose(scores.numpy(), reference_mutual_scores(features, 0.1, 0.5).numpy(), atol=1e-6)


@pytest.mark.slow
def test_dask_cluster_run_equals_local_run(prefect_harness, tiny_dataset, reference_run, tmp_path):
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner
    from flows import category_flow
    reference, _ = reference_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = category_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        result = on_dask("mvtec_ad", str(tiny_dataset), "fabric", TINY_CONFIG, str(tmp_path / "artifacts"))
        with Client(cluster) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "tile_task" in prefixes, prefixes  # the tiles ran on the Dask workers
    for ours, theirs in zip(reference["scores"], result["scores"]):
        assert_same_arrays(read_all(ours), read_all(theirs))
    for stage in ("extract", "classify"):
        assert_same_arrays(read_all(reference[stage]), read_all(result[stage]))
    assert result["metrics"] == reference["metrics"]


def test_a_tile_row_reads_its_first_block_once(tiny_dataset, tmp_path, monkeypatch):
    """Tiles are computed row by row and a tile task's tiles are one block row: the row's first block
    is read once and kept for the next tile (musc/stages/score.py ``_block_features``), so a row of
    n - first tiles opens the aggregate n - first times, not 2 (n - first) - 1."""
    import h5py

    from musc import store
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.method import threads
    from musc.stages import Run, build_all, score
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)  # one thread: the tiles in their order
    opened = []

    class Counting:
        def __getattr__(self, name):
            return getattr(h5py, name)

        @staticmethod
        def File(path, *args, **kwargs):
            opened.append(str(path))
            return h5py.File(path, *args, **kwargs)
    monkeypatch.setattr(score, "h5py", Counting())
    refs = build_all(Run(load_category("mvtec_ad", tiny_dataset, "fabric"),
                         MuscConfig(**{**TINY_CONFIG, "block_size": 2, "r_list": [1]}), str(tmp_path)))
    n_images = len(store.open_artifact(refs["extract"]["path"]).read("names"))
    blocks = -(-n_images // 2)
    aggregate = refs["aggregate"][0]["path"]
    assert opened.count(str(aggregate)) == blocks + blocks * (blocks - 1) // 2  # each row's first block, then each second
