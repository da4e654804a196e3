"""A real Prefect server on loopback: deploy from prefect.yaml, run the demo deployment through a
process worker, read its table artifact and HDF5 artifacts through the API, and retry a failed run.
Marked slow (about 2-3 minutes); .ci/run runs it."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT
from musc import store

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server_home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "MUSC_FLOW_HOME": str(ROOT),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
           "PREFECT_UI_ENABLED": "false"}
    logs = home / "server.log"
    process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=open(logs, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    api = env["PREFECT_API_URL"]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("Prefect server did not start: " + logs.read_text()[-2000:])
        yield {"env": env, "api": api, "home": home}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def prefect(server, *args, timeout=180, env=None):
    result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env={**server["env"], **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def wait_for(server, flow_run_id, states, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{server['api']}/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in states:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} stayed {run['state']['type']}")


def start_run(server, deployment, **parameters):
    ids = httpx.post(f"{server['api']}/deployments/filter",
                     json={"deployments": {"name": {"any_": [deployment]}}}).json()
    assert ids, f"deployment {deployment} not found"
    response = httpx.post(f"{server['api']}/deployments/{ids[0]['id']}/create_flow_run", json={"parameters": parameters})
    response.raise_for_status()
    return response.json()["id"]


@contextlib.contextmanager
def process_worker(server, deployments: list[str], failing_stage: str, folder: Path):
    """Deploy from prefect.yaml and run a process worker on musc-pool; ``failing_stage`` fails once
    while the yielded marker file exists (MUSC_FAIL_ONCE)."""
    prefect(server, "work-pool", "create", "musc-pool", "--type", "process")
    prefect(server, "deploy", *deployments)
    marker = folder / f"fail-{failing_stage}-once"
    env = {**server["env"], "MUSC_FAIL_ONCE": f"{failing_stage}:{marker}"}
    process = subprocess.Popen([PREFECT, "worker", "start", "--pool", "musc-pool"], cwd=ROOT, env=env,
                               stdout=open(server["home"] / "worker.log", "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield {"marker": marker}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


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
                       json={"artifacts": {"key": {"any_": ["musc-mvtec-ad-metrics"]}}}).json()
    assert found and found[0]["type"] == "table"
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
