"""The line learns from inspectors' verdicts: each verdict is a Prefect event, the days' history shows
parts, flagged, confirmed and dismissed (the false alarms inspectors see), and an opt-in threshold
rule ``reviewed`` sets the threshold F1-optimally on the scores of the parts reviewed against the
same pool (a pool made anew learns nothing from its predecessor's verdicts)."""
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import copy_pool, scored_day
from flows.cli import app
from musc.reference_pool import DecisionRule, PoolError, PoolFile, record_verdicts


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def sent_events(monkeypatch):
    """The events the line emits, caught where it hands them to Prefect (``emit_event``); a real
    server receives them in test_review_ui.py."""
    import flows.daily
    caught = []
    monkeypatch.setattr(flows.daily, "emit_event", lambda **event: caught.append(SimpleNamespace(**event)))
    return caught


def test_verdicts_are_sent_as_events_with_the_part_day_score_and_pool(pool_file, tiny_dataset, tmp_path,
                                                                      sent_events):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from flows.daily import pool_name
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    day, paths = scored_day(pool, tiny_dataset, ["hole/000.png", "stain/001.png"], tmp_path / "d1", threshold=0.0)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        outcome = cli("review", tmp_path / "d1", "--defect", "hole_000.png", "--good", "stain_001.png", "--note", "x")
    assert outcome.exit_code == 0, outcome.output
    assert "2 event(s) sent" in outcome.stdout
    events = {e.event: e for e in sent_events}
    assert set(events) == {"musc.part.confirmed", "musc.part.dismissed"}
    confirmed, dismissed = events["musc.part.confirmed"], events["musc.part.dismissed"]
    scores = {row["path"]: row for row in day.rows}
    assert confirmed.payload["part"] == paths[0] and confirmed.payload["score"] == round(scores[paths[0]]["score"], 4)
    assert confirmed.payload["identity"] == scores[paths[0]]["part"] and confirmed.payload["note"] == "x"
    assert dismissed.payload["part"] == paths[1] and dismissed.payload["day"] == "2026-12-01"
    assert confirmed.resource["prefect.resource.id"] == f"musc.pool.{pool_name(pool)}" == \
        dismissed.resource["prefect.resource.id"]
    assert confirmed.resource["musc.day"] == "2026-12-01" and confirmed.resource["musc.pool.id"] == PoolFile(pool).id


def test_without_a_server_review_records_and_says_no_event_was_sent(pool_file, tiny_dataset, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    scored_day(pool, tiny_dataset, ["hole/000.png"], tmp_path / "d1", threshold=0.0)
    with temporary_settings({PREFECT_API_URL: None}):
        outcome = cli("review", tmp_path / "d1", "--defect", "hole_000.png")
    assert outcome.exit_code == 0, outcome.output
    assert "events not sent: no Prefect server configured" in outcome.stdout
    assert list(pd.read_csv(tmp_path / "d1" / "scores.csv", keep_default_na=False)["verdict"]) == ["defect"]


def test_the_days_show_parts_flagged_confirmed_and_dismissed(pool_file, tiny_dataset, tmp_path):
    from musc.reference_pool.daily import day_summary, plot_trends, review_counts, write_day_report
    from musc.reference_pool.verdicts import per_day, verdict_history_path
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    one, p1 = scored_day(pool, tiny_dataset, ["hole/000.png", "stain/001.png", "good/000.png", "good/001.png"],
                         tmp_path / "d1", "2026-12-01", threshold=0.5)
    two, p2 = scored_day(pool, tiny_dataset, ["scratch/000.png", "good/002.png"], tmp_path / "d2", "2026-12-02",
                         threshold=0.5)
    assert [row["decision"] for row in one.rows] == ["anomalous", "anomalous", "normal", "normal"]
    assert [row["decision"] for row in two.rows] == ["anomalous", "normal"]
    record_verdicts(tmp_path / "d1", defect=[p1[1]], good=[p1[0], p1[2]])  # p3: good but not flagged
    record_verdicts(tmp_path / "d1", defect=[p1[0]])                      # p1 judged again: the later stands
    record_verdicts(tmp_path / "d2", good=[p2[0]])
    history = pd.DataFrame([day_summary("2026-12-01", one.scored_rows(), 0.5, 3),
                            day_summary("2026-12-02", two.scored_rows(), 0.5, 3)])
    table = review_counts(history, per_day(verdict_history_path(pool), PoolFile(pool).id))
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


def test_the_reviewed_rule_is_refused_until_both_verdicts_are_there(pool_file, tiny_dataset, tmp_path):
    from musc.reference_pool.verdicts import evidence
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    _, paths = scored_day(pool, tiny_dataset, ["hole/000.png", "stain/001.png"], tmp_path / "d1", threshold=0.0)
    with pytest.raises(PoolError, match="threshold rule reviewed: .* holds no defect and no good verdict"):
        DecisionRule(rule="reviewed").apply(PoolFile(pool), evidence(PoolFile(pool)))
    record_verdicts(tmp_path / "d1", defect=paths)
    with pytest.raises(PoolError, match="holds no good verdict with a score yet .*\\(2 defect, 0 good\\)"):
        DecisionRule(rule="reviewed").apply(PoolFile(pool), evidence(PoolFile(pool)))
    outcome = cli("score-new", "--pool", pool, "--threshold-rule", "reviewed", paths[0], "--out", tmp_path / "x")
    assert outcome.exit_code != 0 and "threshold rule reviewed" in outcome.output
    assert len([line for line in outcome.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "x").exists()  # refused before any work
    from musc.inputs.config import ConfigError
    with pytest.raises(ConfigError, match="^rule: expected 'calibrated' or 'reviewed', got 'learned'"):
        DecisionRule(rule="learned")


def test_the_reviewed_rule_learns_from_its_own_pools_verdicts_only(pool_file, tiny_dataset, tmp_path):
    from musc.outputs.evaluation import f1_optimal_threshold
    from musc.reference_pool import write_pool
    from musc.reference_pool.verdicts import evidence
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    day, paths = scored_day(pool, tiny_dataset, ["hole/000.png", "stain/001.png", "scratch/000.png", "good/000.png"],
                            tmp_path / "d1", threshold=0.0)
    record_verdicts(tmp_path / "d1", defect=paths[:2], good=paths[2:])
    threshold, text = DecisionRule(rule="reviewed").apply(PoolFile(pool), evidence(PoolFile(pool)))
    scores = {row["path"]: row["score"] for row in day.rows}
    assert threshold == f1_optimal_threshold([1, 1, 0, 0], [scores[p] for p in paths])
    assert "reviewed: F1-optimal on the scores of 4 reviewed parts (2 defect, 2 good" in text
    learnt = evidence(PoolFile(pool))
    assert (learnt.defect, learnt.good) == (2, 2)
    same = PoolFile(pool)  # the pool made anew at the same path, of the same images: another pool
    write_pool(tmp_path / "line3.h5", same.settings, [same.images()], 50, {})
    with pytest.raises(PoolError, match="holds no defect and no good verdict"):
        DecisionRule(rule="reviewed").apply(PoolFile(pool), evidence(PoolFile(pool)))


@pytest.mark.slow  # runs a category flow and two daily flows
def test_a_reviewed_day_teaches_the_next_days_threshold_and_shows_in_its_report(prefect_harness, tmp_path):
    import shutil
    from pathlib import Path
    from conftest import run_category
    from flows.daily import daily_folder_flow
    from musc.inputs.synthetic import make_dataset
    from musc.reference_pool import add_run_to_pool
    from musc.reference_pool.day import load_day, view
    data = make_dataset(tmp_path / "data", n_good=12, n_per_defect=1, size=64, seed=5, categories=("fabric",))
    run_category(data, tmp_path / "artifacts")
    pool = tmp_path / "line3.h5"
    add_run_to_pool(pool, tmp_path / "artifacts/mvtec_ad/fabric")
    parts = make_dataset(tmp_path / "parts", n_good=4, n_per_defect=1, size=64, seed=9, categories=("fabric",))
    root = tmp_path / "incoming"
    for day, seed in (("2026-12-01", 9), ("2026-12-02", 10)):
        made = make_dataset(tmp_path / f"parts{seed}", n_good=4, n_per_defect=1, size=64, seed=seed,
                            categories=("fabric",)) if seed != 9 else parts
        (root / day).mkdir(parents=True)
        for image in sorted((made / "fabric/test").glob("*/*.png")):
            shutil.copy(image, root / day / f"{image.parent.name}_{image.name}")
    first = daily_folder_flow(str(pool), str(root), day="2026-12-01", out=str(tmp_path / "d1"))
    scores = pd.read_csv(tmp_path / "d1" / "scores.csv")
    defects = [p for p in scores["path"] if not Path(p).name.startswith("good_")]
    goods = [p for p in scores["path"] if Path(p).name.startswith("good_")]
    record_verdicts(tmp_path / "d1", defect=defects, good=goods)
    flagged = set(scores.loc[scores["decision"] == "anomalous", "path"])
    confirmed, dismissed = len(flagged & set(defects)), len(flagged & set(goods))
    assert first["anomalous"] == len(flagged)
    assert "| verdict |" in (tmp_path / "d1" / "report.md").read_text()  # the review drew the day's report again
    assert set(pd.read_csv(tmp_path / "d1" / "scores.csv", keep_default_na=False)["verdict"]) == {"defect", "good"}

    daily_folder_flow(str(pool), str(root), day="2026-12-02", out=str(tmp_path / "d2"),
                      decision=DecisionRule(rule="reviewed"))
    second = view(load_day(tmp_path / "d2"))
    assert second.rule_name == "reviewed"
    assert (second.evidence["defect"], second.evidence["good"]) == (len(defects), len(goods))
    labels = [1] * len(defects) + [0] * len(goods)
    values = [float(scores.set_index("path").loc[p, "score"]) for p in defects + goods]
    from musc.outputs.evaluation import f1_optimal_threshold
    assert second.threshold == pytest.approx(f1_optimal_threshold(labels, values))
    report = (tmp_path / "d2" / "report.md").read_text()
    assert f"({len(defects)} defect, {len(goods)} good" in report  # the rule's evidence beside the threshold
    rate = f"{dismissed / len(flagged):.0%}" if flagged else ""
    assert f"| 2026-12-01 | {len(scores)} | {len(flagged)} | {confirmed} | {dismissed} | {rate} |" in report
