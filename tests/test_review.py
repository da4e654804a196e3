"""musc review: a day's flagged parts listed in the terminal, inspectors' verdicts recorded in the
day's scores.csv and in the verdict history; bad input is one line and writes nothing."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

PARTS = [("a/part_1.png", 0.91, "anomalous"), ("a/part_2.png", 0.12, "normal"), ("b/part_3.png", 0.75, "anomalous"),
         ("b/part_1.png", 0.20, "normal")]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def make_day(folder, pool=None):
    """A day's results folder as score_new_images writes it (scores.csv, day.json)."""
    folder.mkdir(parents=True)
    rows = [{"path": str(folder.parent / "incoming" / path), "score": score, "decision": decision,
             "map_png": str(folder / "maps" / path.replace("/", "__"))} for path, score, decision in PARTS]
    pd.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
    if pool is not None:
        (folder / "day.json").write_text(json.dumps({"day": "2026-12-01", "pool": str(pool), "pool_digest": "0" * 64}))
    return [row["path"] for row in rows]


def test_review_lists_flagged_parts_and_records_verdicts(tmp_path):
    pool = tmp_path / "line3.h5"
    day = tmp_path / "results"
    paths = make_day(day, pool)
    listed = cli("review", day)
    assert listed.exit_code == 0, listed.output
    assert "2026-12-01: 2 flagged of 4 part(s)" in listed.stdout
    lines = [line for line in listed.stdout.splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in lines] == [paths[0], paths[2]]  # highest score first, normal parts not listed
    assert all("not reviewed" in line for line in lines)

    first = cli("review", day, "--good", "part_3.png", "--defect", paths[0], "--note", "seen at the bench")
    assert first.exit_code == 0, first.output
    table = pd.read_csv(day / "scores.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "score", "decision", "map_png", "verdict"]
    assert list(table["verdict"]) == ["defect", "", "good", ""]
    assert list(table["score"]) == [score for _, score, _ in PARTS]
    history_file = tmp_path / "line3.verdicts.csv"  # beside the pool the day records
    history = pd.read_csv(history_file, keep_default_na=False)
    assert list(history.columns) == ["day", "part", "verdict", "note", "time", "score", "decision"]
    assert sorted(zip(history["part"], history["score"], history["decision"])) == sorted(
        [(paths[0], PARTS[0][1], "anomalous"), (paths[2], PARTS[2][1], "anomalous")])
    assert sorted(zip(history["part"], history["verdict"])) == sorted([(paths[0], "defect"), (paths[2], "good")])
    assert set(history["day"]) == {"2026-12-01"} and set(history["note"]) == {"seen at the bench"}
    assert "warning: the pool" in first.stderr  # the recorded pool is gone: said, and the verdicts recorded anyway

    again = cli("review", day, "--good", paths[0])  # a second verdict for one part: the later stands
    assert again.exit_code == 0, again.output
    assert list(pd.read_csv(day / "scores.csv", keep_default_na=False)["verdict"]) == ["good", "", "good", ""]
    history = pd.read_csv(history_file, keep_default_na=False)
    assert list(history.loc[history["part"] == paths[0], "verdict"]) == ["defect", "good"]  # both kept
    assert len(history) == 3
    assert f"{paths[0]}  score 0.9100  good" in again.stdout


def test_a_day_without_its_pool_keeps_the_history_in_its_folder(tmp_path):
    day = tmp_path / "results"
    paths = make_day(day)
    assert cli("review", day, "--defect", paths[2]).exit_code == 0
    history = pd.read_csv(day / "verdicts.csv", keep_default_na=False)
    assert list(history[["day", "part", "verdict"]].itertuples(index=False, name=None)) == [("results", paths[2], "defect")]


@pytest.mark.parametrize("args, message", [
    (["--good", "part_9.png"], "part_9.png: no part of that name was scored on 2026-12-01"),
    (["--good", "part_3.png", "--defect", "part_9.png"], "part_9.png: no part of that name"),
    (["--good", "part_1.png"], "part_1.png: 2 parts of 2026-12-01 have this name"),
    (["--good", "part_3.png", "--defect", "part_3.png"], "part_3.png: given both --good and --defect"),
])
def test_a_bad_verdict_is_one_line_and_writes_nothing(tmp_path, args, message):
    day = tmp_path / "results"
    make_day(day, tmp_path / "line3.h5")
    before = (day / "scores.csv").read_bytes()
    refused = cli("review", day, *args)
    assert refused.exit_code == 2 and message in refused.stderr, refused.output
    assert refused.stderr.count("\n") == 1
    assert (day / "scores.csv").read_bytes() == before
    assert not (tmp_path / "line3.verdicts.csv").exists() and not (day / "verdicts.csv").exists()


def test_a_folder_that_is_not_a_day_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "no scores.csv here"), (tmp_path / "missing", "no such day folder")):
        refused = cli("review", folder, "--good", "x.png")
        assert refused.exit_code == 2 and message in refused.stderr and refused.stderr.count("\n") == 1, refused.output
