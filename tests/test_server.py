"""A real Prefect server on loopback: deploy from prefect.yaml, run the demo deployment through a
process worker, read its table artifact and HDF5 artifacts through the API, and retry a failed run.
Marked slow (about 2-3 minutes); .ci/run runs it."""
import json

import httpx
import pytest

from conftest import prefect, process_worker, start_run, wait_for
from musc import store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(server, tmp_path_factory):
    with process_worker(server, ["--all"], "score", tmp_path_factory.mktemp("fail")) as started:
        yield started


def test_demo_deployment_runs_and_publishes_artifacts(server, worker, tmp_path):
    artifacts = tmp_path / "artifacts"
    flow_run = start_run(server, "musc-demo", data=str(tmp_path / "demo_data"), artifacts=str(artifacts))
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "COMPLETED", (server["home"] / "worker.log").read_text()[-3000:]
    found = httpx.post(f"{server['api']}/artifacts/filter",
                       json={"artifacts": {"key": {"any_": ["musc-demo-mvtec-ad-metrics"]}}}).json()
    assert found and found[0]["type"] == "table"
    # the demo deployment's history is its own: nothing under the keys of runs started by hand or nightly
    assert not httpx.post(f"{server['api']}/artifacts/filter",
                          json={"artifacts": {"key": {"like_": "musc-mvtec-ad-%"}}}).json()
    made = json.loads(store.open_artifact(next(artifacts.glob("mvtec_ad/*/evaluate/*.h5"))).attrs["made_by"])
    assert made == {"flow_run": flow_run, "deployment": "musc-demo"}  # the run that made it, recorded
    rows = json.loads(found[0]["data"]) if isinstance(found[0]["data"], str) else found[0]["data"]
    assert {row["category"] for row in rows} >= {"fabric", "washer", "mean"}
    evaluations = list(artifacts.glob("mvtec_ad/*/evaluate/*.h5"))
    assert len(evaluations) == 2 and all(store.valid_digest(p, "evaluate") for p in evaluations)


def test_failed_run_is_retried_without_rerunning_extraction(server, worker, tmp_path):
    artifacts = tmp_path / "artifacts"
    worker["marker"].write_text("fail the score stage once")
    flow_run = start_run(server, "musc-demo", data=str(tmp_path / "demo_data"), artifacts=str(artifacts))
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "FAILED" and not worker["marker"].exists()
    extracted = {p: p.stat().st_mtime_ns for p in artifacts.glob("mvtec_ad/*/extract/*.h5")}
    assert extracted and not list(artifacts.glob("mvtec_ad/*/classify/*.h5"))
    prefect(server, "flow-run", "retry", flow_run)
    run = wait_for(server, flow_run, {"COMPLETED", "CRASHED"}, timeout=400)
    assert run["state"]["type"] == "COMPLETED"
    # what the failed try had extracted is reused as it is (the other category is extracted now)
    assert {p: p.stat().st_mtime_ns for p in extracted} == extracted
    assert len(list(artifacts.glob("mvtec_ad/*/evaluate/*.h5"))) == 2
