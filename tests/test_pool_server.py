"""The daily-folder deployment on a real Prefect server: a run scheduled at 23:30 the day before,
failing once and retried after midnight, scores that day's folder; its table artifact, heat-map
thumbnails and event are read back through the server's API. Marked slow (about a minute)."""
import json
from pathlib import Path
import time
from datetime import datetime, timedelta, timezone

import httpx
import pandas as pd
import pytest

from conftest import ROOT, api_post, find_deployment, prefect, process_worker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(server, tmp_path_factory):
    """A process worker for the daily deployment: its runs fail once while worker["marker"] exists,
    kill themselves (SIGKILL) after their 2nd part's features while worker["kill"] exists, and log
    their backbone forwards and stage builds to worker["work"]."""
    folder = tmp_path_factory.mktemp("fail")
    env = {"MUSC_KILL_ONCE": f"features:2:{folder / 'kill-once'}", "MUSC_WORK_LOG": str(folder / "work.log")}
    with process_worker(server, ["--name", "daily-folder"], "daily", folder, env) as started:
        yield {**started, "kill": folder / "kill-once", "work": folder / "work.log"}


def test_a_retry_after_midnight_scores_the_scheduled_day_and_tells_people(server, worker, pool_file,
                                                                          tiny_dataset, tmp_path):
    api = server["api"]
    today = datetime.now(timezone.utc)
    scheduled = (today - timedelta(days=1)).replace(hour=23, minute=30, second=0, microsecond=0)
    day, next_day = scheduled.strftime("%Y-%m-%d"), today.strftime("%Y-%m-%d")
    root = tmp_path / "incoming"
    for folder, images in ((day, ["good/000.png", "hole/000.png", "stain/001.png"]), (next_day, ["good/000.png"])):
        (root / folder).mkdir(parents=True)
        for image in images:
            (root / folder / image.replace("/", "_")).write_bytes((tiny_dataset / "fabric/test" / image).read_bytes())

    # a fixed threshold between the good part and the defective ones, from their scores against the pool
    # (scored here without Prefect): the run below must then decide both ways
    from musc.reference_pool import DecisionRule, score_new_images
    probe = score_new_images(pool_file, sorted((root / day).glob("*.png")), tmp_path / "probe", DecisionRule(threshold=0.0))
    scores = {Path(row["path"]).name: row["score"] for row in probe.rows}
    good, worst = scores["good_000.png"], max(scores["hole_000.png"], scores["stain_001.png"])
    assert good < worst, scores  # a defect stands out against a pool of good parts
    threshold = (good + worst) / 2

    worker["marker"].write_text("fail the first try")
    deployment = find_deployment(api, "daily-folder")
    flow_run = api_post(api, f"/deployments/{deployment['id']}/create_flow_run", {
        "parameters": {"pool": str(pool_file), "root": str(root), "decision": {"threshold": threshold},
                       "review_wait_s": 0},  # no review form here (test_review_ui.py)
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": scheduled.isoformat()}}})["id"]
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "FAILED" and not worker["marker"].exists(), \
        (server["home"] / "worker.log").read_text()[-3000:]
    prefect(server, "flow-run", "retry", flow_run)  # now, after midnight of the scheduled day
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "COMPLETED", (server["home"] / "worker.log").read_text()[-3000:]
    assert run["run_count"] >= 2
    assert run["name"] == f"line3 {day} (23:30)"  # the pool, the day it scored, its scheduled time: not a random name

    table = pd.read_csv(root / day / "musc/scores.csv")  # that day's folder, not today's
    assert sorted(table["path"]) == sorted(p.name for p in (root / day).glob("*.png"))  # named within the day
    assert list(table.columns) == ["path", "part", "score", "decision", "verdict", "map_png"]
    assert not (root / next_day / "musc").exists()
    assert (root / day / "musc/report.md").read_text().count("![") >= 4  # trend plot and three maps
    history = pd.read_csv(pool_file.with_name("line3.history.csv"), dtype={"day": str})
    assert list(history["day"]) == [day] and history["count"][0] == 3
    anomalous = table[table["decision"] == "anomalous"]
    assert 0 < len(anomalous) < 3  # parts of both kinds: the order below means something

    from flows.daily import pool_name
    name = pool_name(pool_file)  # line3-<digest of the pool's path>
    assert name.startswith("line3-")
    key = f"musc-daily-{name}"
    artifacts = {a["key"]: a for a in httpx.post(f"{api}/artifacts/filter", json={
        "artifacts": {"key": {"any_": [key, f"{key}-maps"]}}}).json()}
    rows = artifacts[key]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert artifacts[key]["type"] == "table" and len(rows) == 3
    decisions = [row["decision"] for row in rows]
    assert sorted(row["part"] for row in rows) == sorted(p.name for p in (root / day).glob("*.png"))
    assert all(str(tmp_path) not in json.dumps(row) for row in rows)  # no worker paths in the table
    assert all(row["score"] == f"{table.set_index('path').loc[row['part'], 'score']:.4f}"
               for row in rows)
    assert decisions == sorted(decisions)  # "anomalous" < "normal": anomalous parts first
    maps = artifacts[f"{key}-maps"]["data"]
    assert maps.count("data:image/png;base64,") == 4  # each part's picture or heat map, and the trend plot
    assert maps.count("| **anomalous** |") == len(anomalous) and "## Trend" in maps

    events = []
    for _ in range(30):
        events = httpx.post(f"{api}/events/filter", json={
            "filter": {"event": {"name": ["musc.daily.scored"]}}}).json()["events"]
        if events:
            break
        time.sleep(1)
    assert len(events) == 1, events
    payload = events[0]["payload"]
    assert payload["day"] == day and payload["count"] == 3 and payload["anomalous"] == len(anomalous)
    assert sorted(p["path"] for p in payload["anomalous_parts"]) == sorted(anomalous["path"])
    assert [p["score"] for p in payload["anomalous_parts"]] == sorted(round(s, 4) for s in anomalous["score"])[::-1]
    # the day's files named from the day's folder (the root as the deployment's parameter gives it)
    assert payload["folder"] == str(root / day) and payload["report"] == "musc/report.md"
    assert (root / day / payload["scores_csv"]).is_file() and all(
        (root / day / "musc" / p["map_png"]).is_file() for p in payload["anomalous_parts"])
    assert events[0]["resource"]["prefect.resource.id"] == f"musc.pool.{name}"
    assert events[0]["resource"]["musc.anomalous"] == ("true" if len(anomalous) else "false")


def test_the_readme_automation_matches_the_event():
    """configs/automation-daily.yaml is a valid Prefect automation whose trigger takes the daily
    event of a day with anomalous parts, and not one without."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from prefect.events.schemas.events import Resource
    automation = AutomationCore.model_validate(yaml.safe_load((ROOT / "configs/automation-daily.yaml").read_text())
                                               ["automations"][0])
    resource = {"prefect.resource.id": "musc.pool.line3", "musc.day": "2026-11-27"}
    assert automation.trigger.expect == {"musc.daily.scored"}
    assert automation.trigger.match.includes([Resource.model_validate({**resource, "musc.anomalous": "true"})])
    assert not automation.trigger.match.includes([Resource.model_validate({**resource, "musc.anomalous": "false"})])


def test_a_day_killed_mid_scoring_and_retried_recomputes_only_what_was_unfinished(server, worker, pool_file,
                                                                                 tiny_dataset, tmp_path):
    """kill -9 of the flow run's process after two of five parts' features: the worker marks the run
    Crashed; `prefect flow-run retry` runs it again, which forwards only the three parts left and
    builds only what was unfinished, and the day's artifacts equal an uninterrupted day's bit for bit."""
    import h5py
    import numpy as np

    from conftest import copy_pool
    from musc.reference_pool import DecisionRule, score_new_images
    from musc.reference_pool.day import load_day
    pool = copy_pool(pool_file, tmp_path / "line4.h5")
    day = "2026-11-20"
    root = tmp_path / "incoming"
    (root / day).mkdir(parents=True)
    for image in ("good/000.png", "good/001.png", "hole/000.png", "stain/001.png", "scratch/000.png"):
        (root / day / image.replace("/", "_")).write_bytes((tiny_dataset / "fabric/test" / image).read_bytes())
    worker["kill"].write_text("kill the first try")
    worker["work"].unlink(missing_ok=True)
    deployment = find_deployment(server["api"], "daily-folder")
    flow_run = api_post(server["api"], f"/deployments/{deployment['id']}/create_flow_run", {
        "parameters": {"pool": str(pool), "root": str(root), "day": day, "decision": {"threshold": 0.55},
                       "review_wait_s": 0}})["id"]
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "CRASHED" and not worker["kill"].exists(), (server["home"] / "worker.log").read_text()[-3000:]
    killed = worker["work"].read_text().splitlines()
    assert killed.count("forward") == 2 and killed.count("build features") == 2, killed
    deadline = time.time() + 60  # the worker's own report of the dead process, before the retry it would overwrite
    while f"Reported flow run '{flow_run}' as crashed: Flow run infrastructure exited" not in \
            (server["home"] / "worker.log").read_text() and time.time() < deadline:
        time.sleep(1)
    prefect(server, "flow-run", "retry", flow_run)
    run = wait_for(server, flow_run, {"COMPLETED", "FAILED", "CRASHED"})
    assert run["state"]["type"] == "COMPLETED", (server["home"] / "worker.log").read_text()[-3000:]
    retried = worker["work"].read_text().splitlines()[len(killed):]
    assert retried.count("forward") == 3 and retried.count("build features") == 3, retried  # only the rest
    assert retried.count("build pool_score") == 5 and retried.count("build decide") == 1, retried

    record = load_day(root / day / "musc")
    alone = score_new_images(pool, sorted(str(p) for p in (root / day).glob("*.png")), tmp_path / "alone",
                             DecisionRule(threshold=0.55), day=day, device="cpu")
    assert sorted(record.parts) == sorted(alone.record.parts)
    for part, artifacts in record.parts.items():
        for kind in ("features", "pool_score"):
            with h5py.File(record.root / artifacts[kind]) as retry, h5py.File(alone.record.root /
                                                                             alone.record.parts[part][kind]) as whole:
                assert set(retry) == set(whole)
                for name in retry:
                    np.testing.assert_array_equal(retry[name][()], whole[name][()], err_msg=f"{kind} {name}")
    with h5py.File(record.root / record.decide) as retry, h5py.File(alone.record.root / alone.record.decide) as whole:
        for name in ("parts", "scores", "decisions"):
            assert list(retry[name][()]) == list(whole[name][()])
