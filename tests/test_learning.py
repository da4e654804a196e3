"""The line learns from inspectors' verdicts: each verdict is a Prefect event, the days' history shows
parts, flagged, confirmed and dismissed (the false alarms inspectors see), and an opt-in threshold
rule ``reviewed`` sets the threshold F1-optimally on the reviewed parts' scores."""
import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from musc.reference_pool import DecisionRule, Images, PoolError, PoolFile, PoolSettings, record_verdicts, write_pool
from musc.reference_pool.daily import day_summary, plot_trends, review_counts, write_day_report
from musc.reference_pool.review import read_verdicts, verdict_history_path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def make_day(folder, pool, day, parts):
    """A day's results folder as score_new_images writes it: parts = [(name, score, decision)]."""
    folder.mkdir(parents=True)
    rows = [{"path": str(folder / name), "score": score, "decision": decision, "map_png": str(folder / f"{name}.map.png")}
            for name, score, decision in parts]
    pd.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
    (folder / "day.json").write_text(json.dumps({"day": day, "pool": str(pool), "pool_digest": ""}))
    return [row["path"] for row in rows]


def tiny_pool(path):
    torch.manual_seed(0)
    features = {1: torch.nn.functional.normalize(torch.randn(1, 3, 16, 8), dim=-1).numpy()}
    write_pool(path, PoolSettings("fabric", {"image_size": 32, "layers": [0]}, (1,)),
               [Images(["a", "b", "c"], ["a", "b", "c"], np.zeros(3), lambda r, layer, i: features[r][layer, np.sort(i)],
                       (16, 8))], 10, {})
    return PoolFile(path)


@pytest.fixture
def asserting_events(monkeypatch):
    """Events go to Prefect's asserting client instead of a server."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", partial(EventsWorker.instance, client_type=AssertingEventsClient))
    yield worker
    worker.drain()


def test_verdicts_are_sent_as_events_with_the_part_day_score_and_pool(tmp_path, asserting_events):
    from prefect.events.clients import AssertingEventsClient
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from flows.pool import pool_name
    pool = tmp_path / "line3.h5"
    paths = make_day(tmp_path / "d1", pool, "2026-12-01", [("p1.png", 0.9, "anomalous"), ("p2.png", 0.7, "anomalous")])
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        outcome = cli("review", tmp_path / "d1", "--defect", "p1.png", "--good", "p2.png")
        asserting_events.drain()
    assert outcome.exit_code == 0, outcome.output
    assert "2 event(s) sent" in outcome.stdout
    events = {e.event: e for e in AssertingEventsClient.last.events}
    assert set(events) == {"musc.part.confirmed", "musc.part.dismissed"}
    confirmed, dismissed = events["musc.part.confirmed"], events["musc.part.dismissed"]
    assert confirmed.payload["part"] == paths[0] and confirmed.payload["score"] == 0.9
    assert dismissed.payload["part"] == paths[1] and dismissed.payload["day"] == "2026-12-01"
    assert confirmed.resource.id == f"musc.pool.{pool_name(pool)}" == dismissed.resource.id
    assert confirmed.resource["musc.day"] == "2026-12-01"


def test_without_a_server_review_records_and_says_no_event_was_sent(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    make_day(tmp_path / "d1", tmp_path / "line3.h5", "2026-12-01", [("p1.png", 0.9, "anomalous")])
    with temporary_settings({PREFECT_API_URL: None}):
        outcome = cli("review", tmp_path / "d1", "--defect", "p1.png")
    assert outcome.exit_code == 0, outcome.output
    assert "events not sent: no Prefect server configured" in outcome.stdout
    assert list(pd.read_csv(tmp_path / "d1" / "scores.csv", keep_default_na=False)["verdict"]) == ["defect"]


def test_the_days_show_parts_flagged_confirmed_and_dismissed(tmp_path):
    pool = tmp_path / "line3.h5"
    one = make_day(tmp_path / "d1", pool, "2026-12-01", [("p1.png", 0.9, "anomalous"), ("p2.png", 0.8, "anomalous"),
                                                          ("p3.png", 0.2, "normal"), ("p4.png", 0.1, "normal")])
    two = make_day(tmp_path / "d2", pool, "2026-12-02", [("q1.png", 0.95, "anomalous"), ("q2.png", 0.3, "normal")])
    record_verdicts(tmp_path / "d1", defect=[one[1]], good=[one[0], one[2]])  # p3: good but not flagged
    record_verdicts(tmp_path / "d1", defect=[one[0]])                        # p1 judged again: the later stands
    record_verdicts(tmp_path / "d2", good=[two[0]])
    history = pd.DataFrame([day_summary("2026-12-01", [{"score": s, "decision": d} for s, d in
                                                       ((0.9, "anomalous"), (0.8, "anomalous"), (0.2, "normal"), (0.1, "normal"))],
                                        0.5, 3),
                            day_summary("2026-12-02", [{"score": 0.95, "decision": "anomalous"},
                                                       {"score": 0.3, "decision": "normal"}], 0.5, 3)])
    table = review_counts(history, read_verdicts(verdict_history_path(pool)))
    assert list(table["parts"]) == [4, 2]
    assert list(table["flagged"]) == [2, 1]
    assert list(table["confirmed"]) == [2, 0]
    assert list(table["dismissed"]) == [0, 1]
    assert list(table["false_alarm_rate"]) == [0.0, 1.0]
    assert len(pd.read_csv(verdict_history_path(pool))) == 5  # every verdict kept in the file
    trend = plot_trends(table, tmp_path / "trend.png")
    from PIL import Image
    with Image.open(trend) as picture:
        assert picture.width > 9 * 80  # the third panel: the verdicts per day
    report = write_day_report(tmp_path / "d2", history.iloc[1].to_dict(), [], "calibrated", trend, table)
    text = report.read_text()
    assert "| 2026-12-02 | 2 | 1 | 0 | 1 | 100% |" in text and "| 2026-12-01 | 4 | 2 | 2 | 0 | 0% |" in text


def test_the_reviewed_rule_is_refused_until_both_verdicts_are_there(tmp_path):
    pool = tiny_pool(tmp_path / "line3.h5")
    make_day(tmp_path / "d1", pool.path, "2026-12-01", [("p1.png", 0.9, "anomalous"), ("p2.png", 0.8, "anomalous")])
    with pytest.raises(PoolError, match="threshold rule reviewed: .* holds no defect and no good verdict"):
        DecisionRule(rule="reviewed").apply(pool)
    record_verdicts(tmp_path / "d1", defect=["p1.png", "p2.png"])
    with pytest.raises(PoolError, match="holds no good verdict with a score yet \\(2 defect, 0 good\\)"):
        DecisionRule(rule="reviewed").apply(pool)
    outcome = cli("score-new", "--pool", pool.path, "--threshold-rule", "reviewed", tmp_path / "d1" / "p1.png")
    assert outcome.exit_code != 0 and "threshold rule reviewed" in outcome.output
    assert len([line for line in outcome.output.splitlines() if line.strip()]) == 1
    with pytest.raises(PoolError, match="threshold rule: expected calibrated or reviewed"):
        DecisionRule(rule="learned")


def test_the_reviewed_rule_sets_the_threshold_f1_optimally_on_the_reviewed_scores(tmp_path):
    pool = tiny_pool(tmp_path / "line3.h5")
    make_day(tmp_path / "d1", pool.path, "2026-12-01", [("p1.png", 0.9, "anomalous"), ("p2.png", 0.8, "anomalous"),
                                                        ("p3.png", 0.85, "anomalous"), ("p4.png", 0.3, "normal")])
    record_verdicts(tmp_path / "d1", defect=["p1.png", "p2.png"], good=["p3.png", "p4.png"])
    threshold, text = DecisionRule(rule="reviewed").apply(pool)
    # flagging both defects (0.9, 0.8) and one good part (0.85) gives F1 0.8; any higher threshold
    # misses a defect (F1 at most 2/3); a lower one also flags 0.3 (F1 2/3)
    assert 0.3 < threshold <= 0.8
    assert "reviewed: F1-optimal on the scores of 4 reviewed parts (2 defect, 2 good" in text
    evidence = DecisionRule(rule="reviewed").evidence(pool)
    assert (evidence["defect"], evidence["good"]) == (2, 2)


@pytest.mark.slow  # runs a category flow and two daily flows
def test_a_reviewed_day_teaches_the_next_days_threshold_and_shows_in_its_report(prefect_harness, tmp_path):
    import shutil
    from pathlib import Path
    from conftest import run_category
    from flows.pool import daily_folder_flow
    from musc.inputs.synthetic import make_dataset
    from musc.reference_pool import add_run_to_pool
    data = make_dataset(tmp_path / "data", n_good=12, n_per_defect=1, size=64, seed=5, categories=("fabric",))
    run_category(data, tmp_path / "artifacts")
    pool = tmp_path / "line3.h5"
    add_run_to_pool(pool, tmp_path / "artifacts/mvtec_ad/fabric")
    parts = make_dataset(tmp_path / "parts", n_good=4, n_per_defect=1, size=64, seed=9, categories=("fabric",))
    root = tmp_path / "incoming"
    for day in ("2026-12-01", "2026-12-02"):
        (root / day).mkdir(parents=True)
        for image in sorted((parts / "fabric/test").glob("*/*.png")):
            shutil.copy(image, root / day / f"{image.parent.name}_{image.name}")
    first = daily_folder_flow(str(pool), str(root), day="2026-12-01", out=str(tmp_path / "d1"))
    scores = pd.read_csv(tmp_path / "d1" / "scores.csv")
    defects = [p for p in scores["path"] if not Path(p).name.startswith("good_")]
    goods = [p for p in scores["path"] if Path(p).name.startswith("good_")]
    record_verdicts(tmp_path / "d1", defect=defects, good=goods)
    flagged = set(scores.loc[scores["decision"] == "anomalous", "path"])
    confirmed, dismissed = len(flagged & set(defects)), len(flagged & set(goods))
    assert first["anomalous"] == len(flagged)

    daily_folder_flow(str(pool), str(root), day="2026-12-02", out=str(tmp_path / "d2"),
                      decision=DecisionRule(rule="reviewed"))
    record = json.loads((tmp_path / "d2" / "day.json").read_text())
    assert record["threshold_rule"] == "reviewed"
    assert (record["evidence"]["defect"], record["evidence"]["good"]) == (len(defects), len(goods))
    labels = [1] * len(defects) + [0] * len(goods)
    values = [float(scores.set_index("path").loc[p, "score"]) for p in defects + goods]
    from musc.outputs.evaluation import f1_optimal_threshold
    assert record["threshold"] == pytest.approx(f1_optimal_threshold(labels, values))
    report = (tmp_path / "d2" / "report.md").read_text()
    assert f"({len(defects)} defect, {len(goods)} good" in report  # the rule's evidence beside the threshold
    rate = f"{dismissed / len(flagged):.0%}" if flagged else ""
    assert f"| 2026-12-01 | {len(scores)} | {len(flagged)} | {confirmed} | {dismissed} | {rate} |" in report
