"""The daily flow as a walk of the stage graph, in this process (the deployment's retries on a real
server: test_pool_server.py): an unchanged retry reuses every stage (Cached, no backbone forward,
no build); a retry of a reviewed day with a late part keeps every verdict on the part it was given
for and asks only about the new one (the form keyed by identity, never replayed by position); a
day without parts ends Completed saying so; a review that timed out is named as such."""
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import copy_pool

pytestmark = pytest.mark.slow  # daily flows through Prefect, some seconds each

DAY = "2026-12-01"


@pytest.fixture
def line(prefect_harness, pool_file, tiny_dataset, tmp_path):
    """A copy of the pool, and a day's folder of four parts: one good, three with defects."""
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    folder = tmp_path / "incoming" / DAY
    folder.mkdir(parents=True)
    for image in ("good/000.png", "hole/000.png", "stain/001.png", "good/001.png"):
        shutil.copy(tiny_dataset / "fabric/test" / image, folder / image.replace("/", "_"))
    return pool, tmp_path / "incoming", folder


@pytest.fixture
def work(monkeypatch, tmp_path):
    """The work done from now on, as musc.stages counts it (MUSC_WORK_LOG): forwards and builds."""
    from musc.stages import faults
    log = tmp_path / "work.log"
    monkeypatch.setattr(faults, "WORK_LOG", str(log))

    def done() -> list[str]:
        return log.read_text().splitlines() if log.is_file() else []
    return done


def task_states(state) -> dict[str, list[str]]:
    """The task runs of a flow run, by name: their state names."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    found: dict[str, list[str]] = {}
    for run in runs:
        found.setdefault(run.name.split(" ")[0], []).append(run.state.name)
    return found


def test_an_unchanged_retry_reuses_every_stage(line, work, tmp_path):
    from flows.daily import daily_folder_flow
    pool, root, _ = line
    first = daily_folder_flow(str(pool), str(root), day=DAY, decision={"threshold": 0.55}, review_wait_s=0,
                              return_state=True)
    assert first.is_completed()
    built = work()
    assert built.count("forward") == 4 and built.count("build features") == 4 and "build decide" in built
    again = daily_folder_flow(str(pool), str(root), day=DAY, decision={"threshold": 0.55}, review_wait_s=0,
                              return_state=True)
    assert again.is_completed() and work() == built  # nothing forwarded, nothing built
    states = task_states(again)
    assert set(states) == {"features", "pool_score", "decide"}
    assert all(name == "Cached" for names in states.values() for name in names), states
    assert first.result() == again.result()


def test_a_retry_of_a_reviewed_day_with_a_late_part_asks_only_about_it(line, tiny_dataset, monkeypatch):
    """The review form's answer is stored by Prefect under the pause's key; a retry that pauses under
    a key it has seen gets the old answer back. Keyed by the parts asked about, and its fields by
    their identity, an old answer can never land on another part."""
    import flows.daily
    from musc.store import file_digest
    pool, root, folder = line
    monkeypatch.setattr(flows.daily, "deployment", SimpleNamespace(id="a-deployment"))
    stored, asked = {}, []

    def pause(wait_for_input, timeout, key):  # Prefect's pause: an answer stored per key is given back
        fields = [name for name in wait_for_input.model_fields if name.startswith("part_")]
        asked.append((key, fields))
        if key not in stored:
            stored[key] = wait_for_input(**{name: answers[name] for name in fields if name in answers},
                                         **{f"note_{name[5:]}": f"note on {name[5:]}" for name in fields},
                                         reviewer="ana")
        return stored[key]
    monkeypatch.setattr(flows.daily, "pause_flow_run", pause)
    hole, stain = file_digest(folder / "hole_000.png"), file_digest(folder / "stain_001.png")
    answers = {f"part_{hole[:16]}": "defect", f"part_{stain[:16]}": "good"}
    common = dict(pool=str(pool), root=str(root), day=DAY, decision={"threshold": 0.55}, review_wait_s=60,
                  return_state=True)
    state = flows.daily.daily_folder_flow(**common)
    assert state.name == "Reviewed" and len(asked) == 1
    assert sorted(asked[0][1]) == sorted(answers)  # the flagged parts, by identity
    table = pd.read_csv(folder / "musc/scores.csv", keep_default_na=False).set_index("path")
    assert table.loc["hole_000.png", "verdict"] == "defect"
    assert table.loc["stain_001.png", "verdict"] == "good"
    history = pd.read_csv(pool.with_name("line3.verdicts.csv"), keep_default_na=False)
    assert len(history) == 2 and set(history["reviewer"]) == {"ana"}
    assert set(history["note"]) == {f"note on {hole[:16]}", f"note on {stain[:16]}"}  # a note per part

    shutil.copy(tiny_dataset / "fabric/test/hole/001.png", folder / "late.png")  # a late part, before the retry
    late = file_digest(folder / "late.png")
    answers[f"part_{late[:16]}"] = "defect"
    state = flows.daily.daily_folder_flow(**common)
    assert state.name == "Reviewed" and len(asked) == 2
    assert asked[-1][1] == [f"part_{late[:16]}"]  # only the new flagged part is asked about
    table = pd.read_csv(folder / "musc/scores.csv", keep_default_na=False).set_index("path")
    assert table.loc["hole_000.png", "verdict"] == "defect"  # every verdict on its own part
    assert table.loc["stain_001.png", "verdict"] == "good"
    assert table.loc["late.png", "verdict"] == "defect"
    assert table.loc["good_000.png", "verdict"] == ""
    pauses = len(asked)
    state = flows.daily.daily_folder_flow(**common)  # unchanged: nothing to ask, nothing recorded twice
    assert state.name == "Reviewed" and len(asked) == pauses
    assert len(pd.read_csv(pool.with_name("line3.verdicts.csv"))) == 3


def test_a_day_without_parts_ends_completed_saying_so(line, tmp_path):
    from flows.daily import daily_folder_flow
    pool, root, _ = line
    (root / "2026-12-05").mkdir()
    for day, why in (("2026-12-04", "no folder"), ("2026-12-05", "no images")):
        state = daily_folder_flow(str(pool), str(root), day=day, return_state=True)
        assert state.is_completed(), state
        result = state.result()
        assert result["count"] == 0 and why in result["no_parts"]
    assert not (root / "2026-12-05" / "musc").exists()


def test_a_review_that_timed_out_is_named_so(line, monkeypatch):
    import flows.daily
    from prefect.exceptions import FlowPauseTimeout
    pool, root, folder = line
    monkeypatch.setattr(flows.daily, "deployment", SimpleNamespace(id="a-deployment"))

    def pause(**_):
        raise FlowPauseTimeout("no answer")
    monkeypatch.setattr(flows.daily, "pause_flow_run", pause)
    monkeypatch.setattr(flows.daily, "resume_after_wait", lambda: None)
    state = flows.daily.daily_folder_flow(str(pool), str(root), day=DAY, decision={"threshold": 0.55},
                                          review_wait_s=5, return_state=True)
    assert state.is_completed() and state.name == "Not reviewed"
    assert state.result()["review"] == "not reviewed"
    assert set(pd.read_csv(folder / "musc/scores.csv", keep_default_na=False)["verdict"]) == {""}
