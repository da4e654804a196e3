"""Crashed machines: a demo run whose worker and flow-run process are killed (kill -9) mid-run stays
Running until the automation of configs/automation-crashed.yaml, installed with ``musc automations
install``, marks it Crashed (no heartbeat within its window); ``prefect flow-run retry`` then
completes it on a new worker, reusing what the dead run had extracted. And a parent run keeps its
heartbeats while its category subflows compute, so the automation never takes a working run for
dead. The first two are marked slow (about 3.5 minutes on 2 cores: a real Prefect server, a worker,
the demo twice, a window of a minute; an ephemeral Prefect); the checks of the file and of the
command without a server are quick."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import PREFECT, ROOT, alive, child_pids, prefect, start_run, wait_for
from musc import store

AUTOMATION = ROOT / "configs" / "automation-crashed.yaml"
HEARTBEAT_S = 30  # Prefect's smallest PREFECT_FLOWS_HEARTBEAT_FREQUENCY
# The file's window (600 s: safe with Prefect's default heartbeat of 180 s) shortened for this test to
# two heartbeats of 30 s, the worker's; detection then takes at most a minute and the proactive check's 5 s.
TEST_WINDOW_S = 60
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def musc(server, *args):
    """The ``musc`` command against the server; its stdout, asserting it succeeded."""
    result = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=ROOT, env=server["env"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@contextlib.contextmanager
def worker(server, log: str):
    """A process worker on musc-pool whose flow runs send a heartbeat every HEARTBEAT_S seconds (the
    worker's environment is its flow runs')."""
    env = {**server["env"], "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    process = subprocess.Popen([PREFECT, "worker", "start", "--pool", "musc-pool"], cwd=ROOT, env=env,
                               stdout=open(server["home"] / log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        children = child_pids(todo.pop())
        found.update(children)
        todo += children
    return found


def flow_run_processes(flow_run: str) -> set[int]:
    """The processes that run ``flow_run`` (the worker starts them with PREFECT__FLOW_RUN_ID set)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"PREFECT__FLOW_RUN_ID={flow_run}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
    return found


def heartbeats(server, flow_run: str) -> list[dict]:
    return httpx.post(f"{server['api']}/events/filter", json={"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{flow_run}"]}}, "limit": 50}).json()["events"]


def state(server, flow_run: str) -> dict:
    return httpx.get(f"{server['api']}/flow_runs/{flow_run}").json()["state"]


@pytest.mark.slow
def test_a_run_whose_machine_died_is_marked_crashed_and_retried_without_recomputing(server, tmp_path):
    def logs() -> str:
        return "".join((server["home"] / name).read_text()[-2000:] for name in ("worker.log", "worker2.log")
                       if (server["home"] / name).exists())

    prefect(server, "work-pool", "create", "musc-pool", "--type", "process")
    prefect(server, "deploy", "--name", "musc-demo")

    # the automation as declared, with the test's window; installed twice: the second time updates it
    declared = yaml.safe_load(AUTOMATION.read_text())
    crash = next(a for a in declared["automations"] if a["name"] == "musc-crashed-flow-runs")
    crash["trigger"]["within"] = TEST_WINDOW_S
    shortened = tmp_path / "automation-crashed.yaml"
    shortened.write_text(yaml.safe_dump(declared))
    names = [a["name"] for a in declared["automations"]]
    for done in ("created", "updated"):
        lines = musc(server, "automations", "install", shortened).splitlines()
        assert [line.split()[:2] for line in lines] == [[done, name] for name in names], lines
    installed = httpx.post(f"{server['api']}/automations/filter", json={"automations": {"name": {"any_": names}}}).json()
    assert sorted(a["name"] for a in installed) == sorted(names)
    assert next(a for a in installed if a["name"] == crash["name"])["trigger"]["within"] == TEST_WINDOW_S

    artifacts = tmp_path / "artifacts"
    with worker(server, "worker.log") as first:
        flow_run = start_run(server, "musc-demo", data=str(tmp_path / "demo_data"), artifacts=str(artifacts))
        deadline = time.time() + 300
        while not (list(artifacts.glob("mvtec_ad/*/extract/*.h5")) and heartbeats(server, flow_run)):
            assert state(server, flow_run)["type"] not in TERMINAL, "the run ended before it could be killed: " + logs()
            assert time.time() < deadline, "no extract artifact and heartbeat within 300 s: " + logs()
            time.sleep(0.25)
        # the machine dies: the worker and the flow run's process, kill -9, nobody left to report it
        victims = flow_run_processes(flow_run) | descendants(first.pid)
        assert flow_run_processes(flow_run), "the flow run's process was not found"
        os.killpg(first.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.time()
        first.wait(timeout=30)
    while any(alive(pid) for pid in victims):
        assert time.time() < killed + 30, "killed processes still run"
        time.sleep(0.2)
    extracted = {p: p.stat().st_mtime_ns for p in artifacts.glob("mvtec_ad/*/extract/*.h5")}
    assert extracted and len(list(artifacts.glob("mvtec_ad/*/evaluate/*.h5"))) < 2
    assert state(server, flow_run)["type"] == "RUNNING"  # what Prefect does without the automation: nothing

    run = wait_for(server, flow_run, TERMINAL, timeout=TEST_WINDOW_S + 120)
    crashed_after = time.time() - killed
    assert run["state"]["type"] == "CRASHED", logs()
    assert "configs/automation-crashed.yaml" in run["state"]["message"]
    assert crashed_after < TEST_WINDOW_S + 120
    print(f"marked Crashed {crashed_after:.0f} s after the kill (window {TEST_WINDOW_S} s)")

    with worker(server, "worker2.log"):
        prefect(server, "flow-run", "retry", flow_run)  # Prefect retries a Crashed run
        run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"}, timeout=400)
        assert run["state"]["type"] == "COMPLETED", logs()
    assert run["run_count"] >= 2
    # what the dead run had extracted is reused as it is; the rest is computed now
    assert {p: p.stat().st_mtime_ns for p in extracted} == extracted
    evaluations = list(artifacts.glob("mvtec_ad/*/evaluate/*.h5"))
    assert len(evaluations) == 2 and all(store.valid_digest(p, "evaluate") for p in evaluations)


@pytest.mark.slow
def test_a_parent_run_keeps_its_heartbeats_while_a_category_subflow_computes(prefect_harness, monkeypatch):
    """The heartbeat is a thread of each flow run's engine: the dataset run's goes on while a
    category subflow holds the process (pure-Python work, the GIL held), and a category run that
    only reuses (``_heartbeats_unless_reused``) turns off its own heartbeats, not its parent's. The
    interval is 1 s here (Prefect's floor of 30 s lifted), each heartbeat recorded instead of sent."""
    import prefect.flow_engine as engine
    from prefect import flow
    from prefect.settings import get_current_settings

    import flows.dataset as dataset

    beats = []
    monkeypatch.setattr(engine, "MINIMUM_HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(engine.BaseFlowRunEngine, "heartbeat_seconds", property(
        lambda self: None if get_current_settings().flows.heartbeat_frequency is None else 1))
    monkeypatch.setattr(engine.BaseFlowRunEngine, "_emit_flow_run_heartbeat",
                        lambda self, resource=None, related=None: beats.append((self.flow.name, time.monotonic())))
    monkeypatch.setattr(dataset, "reused_throughout", lambda run: run)  # the "run" says whether it only reuses

    def work(seconds: float) -> int:
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            count += 1
        return count

    reusing, computing = flow(name="reusing-category")(work), flow(name="computing-category")(work)

    @flow(name="parent-dataset")
    def parent() -> dict:
        spans = {}
        for only_reuses, category in ((True, reusing), (False, computing)):
            with dataset._heartbeats_unless_reused(only_reuses):
                start = time.monotonic()
                category(4.0)
                spans[category.name] = (start, time.monotonic())
        return spans

    spans = parent()
    during = {name: [who for who, at in beats if start <= at <= end] for name, (start, end) in spans.items()}
    assert during["reusing-category"].count("parent-dataset") >= 2, beats
    assert during["computing-category"].count("parent-dataset") >= 2, beats
    assert not [who for who, _ in beats if who == "reusing-category"], beats
    assert during["computing-category"].count("computing-category") >= 2, beats


def test_the_automations_crash_only_runs_whose_heartbeats_stopped_and_end_stuck_cancels():
    """The file as the server reads it: after a heartbeat, the next heartbeat, any end (the daily
    flow's named ones too), the wait before an automatic retry or a cancel keeps the run alive;
    nothing within the window marks it Crashed. The window holds three of Prefect's default
    heartbeats. A run left Cancelling ends Cancelled."""
    from prefect.server.events.schemas.automations import AutomationCore
    from prefect.settings.models.flows import FlowsSettings
    automations = {a["name"]: AutomationCore.model_validate(a)
                   for a in yaml.safe_load(AUTOMATION.read_text())["automations"]}
    crash, cancel = automations["musc-crashed-flow-runs"].trigger, automations["musc-stuck-cancelling-flow-runs"].trigger
    event = "prefect.flow-run.{}".format
    assert crash.posture == "Proactive" and crash.for_each == {"prefect.resource.id"}
    assert crash.starts_after(event("heartbeat")) and not crash.starts_after(event("Running"))
    assert all(crash.expects(event(name)) for name in ("heartbeat", "Completed", "Failed", "TimedOut", "Cancelled",
                                                        "Crashed", "Reviewed", "Not reviewed", "AwaitingRetry",
                                                        "Cancelling"))
    assert not any(crash.expects(event(name)) for name in ("Running", "Retrying", "Pending", "Paused"))
    assert crash.within.total_seconds() >= 3 * FlowsSettings.model_fields["heartbeat_frequency"].default
    [action] = automations["musc-crashed-flow-runs"].actions
    assert (action.type, action.state, action.force) == ("change-flow-run-state", "CRASHED", False)
    assert cancel.starts_after(event("Cancelling")) and cancel.expects(event("Cancelled"))
    assert not cancel.expects(event("heartbeat")) and cancel.for_each == {"prefect.resource.id"}
    assert automations["musc-stuck-cancelling-flow-runs"].actions[0].state == "CANCELLED"


def test_installing_without_a_server_says_so_in_one_line():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli_automations import AutomationError, install_automations
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(AutomationError, match="no Prefect server answers at http://127.0.0.1:9/api"):
            install_automations([AUTOMATION])
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(AutomationError, match="no Prefect server configured"):
            install_automations([AUTOMATION])
    with pytest.raises(AutomationError, match="notification block's id"):
        install_automations([ROOT / "configs" / "automation-daily.yaml"])
