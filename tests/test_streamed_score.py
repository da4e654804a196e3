"""A run too large to keep its votes reduces each block row as soon as its tiles are written and
removes the votes it used (musc/stages/score.py ``reduce_row``): the votes on disk stay a fraction
of the stage's, the scores are the same bits, and a killed run resumes to the same artifacts."""
import json

import numpy as np
import pytest

from conftest import TINY_CONFIG, count_work, killed_child, read_all, run_category
from musc import store
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import load_category
from musc.stages import Run, build_all, score


def scored(data, artifacts, **changes):
    return build_all(Run(load_category("mvtec_ad", data, "fabric"), MuscConfig(**{**TINY_CONFIG, **changes}),
                         str(artifacts)))


@pytest.mark.slow
def test_rows_reduced_as_their_tiles_finish_hold_a_fraction_of_the_votes(tiny_dataset, tmp_path, monkeypatch):
    kept = scored(tiny_dataset, tmp_path / "kept", block_size=2, r_list=[3], layers=[0, 2])
    monkeypatch.setattr(score, "KEPT_VOTES_BYTES", 0)
    seen = {"halves": 0, "rows": 0}
    real = score.compute_tile

    def watched(plan, tile):  # what the parts folder holds after each tile
        done = real(plan, tile)
        folder = store.parts_dir(plan.path)
        seen["halves"] = max(seen["halves"], len(list(folder.glob("tile_*.json"))))
        seen["rows"] = len(list(folder.glob("row_*.json")))
        return done
    monkeypatch.setattr(score, "compute_tile", watched)
    streamed = scored(tiny_dataset, tmp_path / "streamed", block_size=2, r_list=[3], layers=[0, 2])
    n_images = len(store.open_artifact(kept["extract"]["path"]).read("names"))
    blocks = -(-n_images // 2)
    halves = blocks * blocks  # every tile's two halves, a block against itself one
    assert seen["rows"] == blocks and seen["halves"] <= halves // 2, (seen, halves)
    for ours, theirs in zip(streamed["score"], kept["score"], strict=True):
        with_votes, without = read_all(theirs), read_all(ours)
        assert "votes" in with_votes and "votes" not in without
        np.testing.assert_array_equal(without["scores"], with_votes["scores"])
        assert not store.parts_dir(ours["path"]).exists()
    np.testing.assert_array_equal(read_all(streamed["classify"])["image_scores"], read_all(kept["classify"])["image_scores"])


@pytest.mark.slow
def test_a_streamed_run_killed_among_its_rows_resumes_to_the_same_artifacts(tiny_dataset, reference_run, tmp_path,
                                                                            monkeypatch):
    artifacts = tmp_path / "artifacts"
    env = {"PREFECT_HOME": str(tmp_path / "child_prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": None}
    killed_child("import musc.stages.score as s; s.KEPT_VOTES_BYTES = 0; from flows import category_flow; "
                 "category_flow('mvtec_ad', %r, 'fabric', %s, %r)" % (str(tiny_dataset), json.dumps(TINY_CONFIG),
                                                                      str(artifacts)), "score_row:1", tmp_path, env)
    parts = [p.name for p in (artifacts / "mvtec_ad/fabric/score").glob("*.parts/*.h5")]
    rows = [p for p in parts if p.startswith("row_")]
    assert rows and any(p.startswith("tile_") for p in parts), parts  # killed with a row written, its halves not yet removed
    monkeypatch.setattr(score, "KEPT_VOTES_BYTES", 0)
    calls = count_work(monkeypatch)
    resumed = run_category(tiny_dataset, artifacts)
    n_layers, n_tiles_per_degree = 4, 6
    assert 0 < calls["tiles"] <= n_layers * (2 * n_tiles_per_degree - 3)  # the reduced row's three tiles are not redone
    reference, _ = reference_run
    for ours, theirs in zip(resumed["scores"], reference["scores"], strict=True):
        np.testing.assert_array_equal(read_all(ours)["scores"], read_all(theirs)["scores"])
    for name in ("extract", "classify"):
        assert read_all(resumed[name]).keys() == read_all(reference[name]).keys()
        np.testing.assert_array_equal(read_all(resumed[name]).get("image_scores"),
                                      read_all(reference[name]).get("image_scores"))
    assert not list(artifacts.rglob("*.parts")) and not list(artifacts.rglob("*.claim"))
