"""A day's artifacts as people open them: each stage of the line an HDF5 artifact that musc inspect
and h5py read (its datasets described by the schema); musc report draws the day's outputs again from
them; musc clean keeps a day's chain; a pool addition names what the size bound drops and clears what
a killed addition left."""
from pathlib import Path

import h5py
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import copy_pool, scored_day
from flows.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def day(pool_file, tiny_dataset, tmp_path):
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    scored, paths = scored_day(pool, tiny_dataset, ["good/000.png", "hole/000.png", "stain/001.png"],
                               tmp_path / "results", threshold=0.55)
    return pool, scored, paths


def test_each_stage_of_a_day_is_an_artifact_inspect_and_h5py_open(day):
    _, scored, _ = day
    record = scored.record
    features, pool_score = (record.root / record.parts[scored.rows[1]["part"]][kind] for kind in ("features", "pool_score"))
    decide = record.root / record.decide
    assert features.parent.name == "features" and pool_score.parent.name == "pool_score"
    for path, stage, shown in ((features, "features", ["features_r1", "picture"]),
                               (pool_score, "pool_score", ["map", "patch_scores", "score"]),
                               (decide, "decide", ["decisions", "parts", "scores"])):
        inspected = cli("inspect", path)
        assert inspected.exit_code == 0, inspected.output
        assert f"stage: {stage}  (complete, digest verified)" in inspected.stdout
        assert all(name in inspected.stdout for name in shown)
        with h5py.File(path) as opened:
            assert opened.attrs["stage"] == stage and opened.attrs["complete"]
    flagged = sum(row["decision"] == "anomalous" for row in scored.rows)
    assert flagged == 2 and f"{flagged} anomalous of 3 part(s), at score >= 0.55, fixed" in cli("inspect", decide).stdout
    with h5py.File(pool_score) as opened:
        assert opened["map"].shape == (64, 64) and opened.attrs["pool_id"] == record.pool["id"]
    with h5py.File(decide) as opened:
        assert sorted(v.decode() for v in opened["parts"][()]) == sorted(record.parts)


def test_report_draws_a_days_outputs_again_from_its_artifacts(day):
    _, scored, _ = day
    folder = scored.record.folder
    before = pd.read_csv(folder / "scores.csv")
    for row in scored.rows:
        (folder / row["map_png"]).unlink()  # named from the results folder
    (folder / "scores.csv").unlink()
    rebuilt = cli("report", folder)
    assert rebuilt.exit_code == 0 and f"day: {folder / 'scores.csv'}" in rebuilt.stdout, rebuilt.output
    pd.testing.assert_frame_equal(pd.read_csv(folder / "scores.csv"), before)
    assert all(row["map_file"].is_file() for row in scored.rows)


def test_clean_keeps_a_days_chain_and_removes_what_no_day_uses(day):
    from musc import store
    _, scored, _ = day
    root = scored.record.root
    stray = root / "line" / "fabric" / "features" / ("0" * 16 + ".h5")
    store.write_artifact(stray, "features", {}, {}, {"features_r1": [[[[0.0]]]], "picture": [[[0]]]})
    kept = sorted(p for p in root.rglob("*.h5") if p != stray)
    cleaned = cli("clean", root)
    assert cleaned.exit_code == 0, cleaned.output
    assert not stray.exists() and all(p.is_file() for p in kept)


def test_a_pool_addition_names_what_the_bound_drops_and_clears_a_killed_additions_leftovers(day):
    from musc.reference_pool import PoolFile
    pool, scored, paths = day
    leftover = pool.with_name(f".{pool.name}.tmp-99999-1")  # what a pool add killed mid-write leaves
    leftover.write_bytes(b"half a pool")
    assert cli("review", scored.record.folder, "--good", paths[0]).exit_code == 0
    oldest = PoolFile(pool).names[:len(PoolFile(pool)) - 1]
    added = cli("pool", "add", "--pool", pool, scored.record.folder, "--max-images", 2)
    assert added.exit_code == 0, added.output
    dropped = [line for line in added.stdout.splitlines() if line.startswith("dropped")]
    assert [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in dropped] == oldest
    assert f"{len(oldest)} dropped (--max-images)" in added.stdout and "holds 2" in added.stdout
    assert PoolFile(pool).names[-1] == paths[0] and not leftover.exists()


def test_a_changed_rule_decides_again_and_a_changed_pool_scores_again_without_forwarding(day, monkeypatch,
                                                                                        tmp_path):
    """What a change reaches, and only that: another rule builds the day's decide artifact alone;
    a pool that changed (a part joined it) scores the parts again from their stored features."""
    from musc.reference_pool import DecisionRule, add_day_to_pool, score_new_images
    from musc.stages import faults
    pool, scored, paths = day
    log = tmp_path / "work.log"
    monkeypatch.setattr(faults, "WORK_LOG", str(log))
    score_new_images(pool, paths, scored.record.folder, DecisionRule(threshold=0.6), device="cpu")
    assert log.read_text().splitlines() == ["build decide"]
    log.unlink()
    assert cli("review", scored.record.folder, "--good", paths[0]).exit_code == 0
    add_day_to_pool(pool, scored.record.folder)
    again = score_new_images(pool, paths, scored.record.folder, DecisionRule(threshold=0.6), device="cpu")
    assert sorted(log.read_text().splitlines()) == ["build decide"] + ["build pool_score"] * 3  # no forward
    assert again.pool_size == scored.pool_size + 1
