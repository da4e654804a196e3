"""The staged Prefect pipeline: caching, selective reruns, corruption, crash and resume."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import (TINY_CONFIG, assert_same_arrays, count_work, killed_child, read_all, run_category, snapshot,
                      stage_files)
from musc import store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_outputs_layout_and_metrics(reference_run):
    result, artifacts = reference_run
    for stage in ("extract", "classify", "evaluate"):
        path = Path(result[stage]["path"])
        assert path.parent == artifacts / "mvtec_ad" / "fabric" / stage
        assert store.verify(path, stage) == result[stage]["digest"]
    assert len(result["scores"]) == 2
    assert result["metrics"]["pixel_auroc"] > 0.8
    outputs = Path(result["outputs"])
    for name in ("per_image.csv", "metrics.csv", "metrics.md", "report.md", "histograms.png"):
        assert (outputs / name).stat().st_size > 0
    assert not list(artifacts.rglob("*.parts")) and not list(artifacts.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_second_run_recomputes_nothing_and_reads_each_artifact_once(tiny_dataset, tmp_path, monkeypatch):
    run_category(tiny_dataset, tmp_path)
    before = snapshot(tmp_path)
    records = sorted(tmp_path.rglob(".*.h5.verified"))
    # a check is recorded beside an artifact only from a hash made once its timestamps are older than
    # their resolution (store.digests.settled): the process that writes an artifact trusts the hash it
    # made of what it wrote (in memory), so a run records few or none; a later command hashes each once
    assert len(records) <= len(before)
    for record in records:
        record.unlink()
    store.forget()  # as in a new process, and no record of earlier checks
    reads = []
    original = store.digests.file_sha256
    monkeypatch.setattr(store.digests, "file_sha256",  # the artifacts hashed (not the images)
                        lambda path: (reads.append(Path(path)) if Path(path).suffix == ".h5" else None) or original(path))
    from flows import category_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    state = category_flow("mvtec_ad", str(tiny_dataset), "fabric", TINY_CONFIG, str(tmp_path), return_state=True)
    result = state.result()
    assert snapshot(tmp_path) == before
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    # task runs named by stage and degree, as the UI lists them
    assert sorted(r.name for r in task_runs) == ["aggregate r=1", "aggregate r=3", "classify", "evaluate",
                                                 "extract fabric", "score r=1", "score r=3"]
    assert {r.state.name for r in task_runs} == {"Cached"}  # what the UI shows for a reused stage
    stages = [result["extract"], *result["scores"], result["classify"], result["evaluate"]]
    assert sorted(map(str, reads)) == sorted({ref["path"] for ref in stages} | {
        str(p) for p in tmp_path.rglob("aggregate/*.h5")}), "each artifact is read and hashed once per run"

    assert len(sorted(tmp_path.rglob(".*.h5.verified"))) == len(before)  # all settled by now: all recorded
    reads.clear()
    store.forget()  # a later command: the records vouch for the unchanged artifacts
    run_category(tiny_dataset, tmp_path)
    assert reads == [] and snapshot(tmp_path) == before
    victim = Path(result["classify"]["path"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))  # same size, same inode: a record of the old file must not vouch for it
    store.forget()
    second = run_category(tiny_dataset, tmp_path)
    assert str(victim) in map(str, reads)  # checked again, found corrupt, rebuilt
    assert second["classify"]["path"] == str(victim) and second["classify"]["digest"] != result["classify"]["digest"]
    assert store.valid_digest(victim) == second["classify"]["digest"]


@pytest.mark.slow
def test_changing_r_list_reruns_only_the_new_degree(tiny_dataset, tmp_path):
    run_category(tiny_dataset, tmp_path, r_list=[1, 3])
    before = snapshot(tmp_path)
    run_category(tiny_dataset, tmp_path, r_list=[1, 3, 5])
    after = snapshot(tmp_path)
    for stage in ("extract", "aggregate", "score"):
        assert all(after[k] == v for k, v in stage_files(before, stage).items()), stage
    for stage in ("aggregate", "score", "classify", "evaluate"):
        assert len(stage_files(after, stage)) == len(stage_files(before, stage)) + 1, stage


@pytest.mark.slow
def test_deleting_score_reruns_score_classify_evaluate_only(tiny_dataset, tmp_path):
    first = run_category(tiny_dataset, tmp_path)
    before = snapshot(tmp_path)
    victim = Path(first["scores"][0]["path"])
    store.remove_artifact(victim)
    second = run_category(tiny_dataset, tmp_path)
    after = snapshot(tmp_path)
    for stage in ("extract", "aggregate"):
        assert stage_files(after, stage) == stage_files(before, stage), stage
    other_score = str(Path(first["scores"][1]["path"]).relative_to(tmp_path))
    assert after[other_score] == before[other_score]
    assert second["scores"][0]["path"] == str(victim) and victim.exists()
    assert second["classify"]["path"] != first["classify"]["path"]
    assert second["evaluate"]["path"] != first["evaluate"]["path"]
    assert_same_arrays(read_all(first["classify"]), read_all(second["classify"]))


@pytest.mark.slow
def test_corrupt_artifact_is_detected_and_rebuilt(tiny_dataset, tmp_path):
    first = run_category(tiny_dataset, tmp_path)
    aggregated = store.open_artifact(first["scores"][0]["path"]).inputs["aggregate"]
    path = next(p for p in (tmp_path / "mvtec_ad/fabric/aggregate").glob("*.h5") if store.valid_digest(p) == aggregated)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(store.ArtifactError, match="digest mismatch"):
        store.verify(path)
    second = run_category(tiny_dataset, tmp_path)
    assert store.valid_digest(path) is not None
    np.testing.assert_array_equal(read_all(first["scores"][0])["scores"], read_all(second["scores"][0])["scores"])


def crash_run(data, artifacts, fault, tmp_path):
    """Run the flow in a child process that kills itself (SIGKILL) at the fault point."""
    env = {"PREFECT_HOME": str(tmp_path / "child_prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": None}  # its own temporary server
    killed_child("from flows import category_flow; category_flow('mvtec_ad', %r, 'fabric', %s, %r)"
                 % (str(data), json.dumps(TINY_CONFIG), str(artifacts)), fault, tmp_path, env)


@pytest.mark.slow
@pytest.mark.parametrize("fault,stage,parts", [("extract:2", "extract", 2), ("score:3", "score", 3)])
def test_killed_run_resumes_to_identical_artifacts(tiny_dataset, reference_run, tmp_path, monkeypatch,
                                                   fault, stage, parts):
    artifacts = tmp_path / "artifacts"
    crash_run(tiny_dataset, artifacts, fault, tmp_path)
    partial = [p for p in (artifacts / "mvtec_ad/fabric" / stage).glob("*.parts/*.h5") if store.valid_digest(p)]
    assert len(partial) >= parts  # tiles run in parallel threads: one more may have finished
    parts = len(partial)
    assert not list((artifacts / "mvtec_ad/fabric" / stage).glob("*.h5"))

    calls = count_work(monkeypatch)
    resumed = run_category(tiny_dataset, artifacts)
    reference, _ = reference_run
    n_layers, n_tiles_per_degree, n_batches = 4, 6, 3
    if stage == "extract":
        assert calls["batches"] == n_batches - parts
    else:
        assert calls["tiles"] == n_layers * (2 * n_tiles_per_degree - parts)
    for name in ("extract", "classify"):
        assert_same_arrays(read_all(reference[name]), read_all(resumed[name]))
    for ours, theirs in zip(reference["scores"], resumed["scores"]):
        assert_same_arrays(read_all(ours), read_all(theirs))
    assert not list(artifacts.rglob("*.parts")) and not list(artifacts.rglob(".*.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["aggregate", "classify", "evaluate"])
def test_kill_during_a_single_write_stage_leaves_nothing_trusted(tiny_dataset, reference_run, tmp_path, stage):
    """Killed while writing: no artifact of that stage is trusted, the rerun completes, equals an
    uninterrupted run, and leaves no temporary file."""
    artifacts = tmp_path / "artifacts"
    crash_run(tiny_dataset, artifacts, f"{stage}:1", tmp_path)
    assert not [p for p in (artifacts / "mvtec_ad/fabric" / stage).glob("*.h5") if store.valid_digest(p)]
    resumed = run_category(tiny_dataset, artifacts)
    reference, _ = reference_run
    assert_same_arrays(read_all(reference["classify"]), read_all(resumed["classify"]))
    assert resumed["metrics"] == reference["metrics"]
    assert not list(artifacts.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_bf16_screened_run_matches_fp32_and_shares_its_artifacts(tiny_dataset, reference_run, tmp_path):
    reference, reference_artifacts = reference_run
    screened = run_category(tiny_dataset, tmp_path, msm_precision="bf16")
    for ours, theirs in zip(screened["scores"], reference["scores"], strict=True):
        np.testing.assert_allclose(read_all(ours)["scores"], read_all(theirs)["scores"], atol=1e-6, rtol=0)
        recorded = store.open_artifact(ours["path"])
        assert recorded.attrs["msm_precision"] == "bf16" and recorded.config["msm_precision"] == "fp32"
    assert screened["metrics"] == pytest.approx(reference["metrics"], abs=1e-6, nan_ok=True)
    # the screening is exact, so it does not change what a cached artifact stands for
    before = snapshot(reference_artifacts)
    run_category(tiny_dataset, reference_artifacts, msm_precision="bf16")
    assert snapshot(reference_artifacts) == before
