"""The warm scorer (musc serve): parts dropped into a watched folder are scored as they arrive, with
the scores and decisions score-new gives them, into the day's folder; a file still being written
waits for the next look; a changed file is a new part; an unreadable one is said and the service
goes on; its output folder may not lie in the watched one; the command stops on SIGTERM in one line."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

DAY = "2026-12-06"


def parts_of(tiny_dataset, folder: Path, names: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for target, source in names.items():
        shutil.copy(tiny_dataset / "fabric/test" / source, folder / target)
    return [folder / target for target in names]


def test_served_parts_get_score_news_scores_and_decisions(pool_file, tiny_dataset, tmp_path):
    from musc.reference_pool import DecisionRule, score_new_images
    from musc.reference_pool.day import load_day
    from musc.reference_pool.serving import serve
    watch = tmp_path / "inbox"
    files = parts_of(tiny_dataset, watch, {"a.png": "good/000.png", "b.png": "hole/000.png", "c.png": "stain/001.png"})
    rule = DecisionRule(threshold=0.5)
    alone = score_new_images(pool_file, [str(f) for f in files], tmp_path / "alone", rule, device="cpu")
    looks, errors = [], []

    def scored(look) -> None:  # after the first parts: a.png written anew (another part), and a broken file
        looks.append(look)
        if len(looks) == 1:
            shutil.copy(tiny_dataset / "fabric/test/hole/001.png", watch / "a.png")
            (watch / "broken.png").write_bytes(b"not a picture")
    serve(pool_file, watch, tmp_path / "served", rule, "cpu", interval=0, looks=5, on_scored=scored,
          on_error=lambda error, files: errors.append((str(error), [f.name for f in files])), day_of=lambda: DAY)
    first = {Path(row["file"]).name: (row["score"], row["decision"]) for row in looks[0].rows()}
    assert first == {Path(row["file"]).name: (row["score"], row["decision"]) for row in alone.rows}
    # later looks: nothing scored again; the rewritten a.png is a new part; broken.png is said, not scored
    assert [sorted(p.name for p in look.files) for look in looks] == [["a.png", "b.png", "c.png"],
                                                                      ["a.png", "broken.png"]]
    assert [Path(row["file"]).name for row in looks[1].rows()] == ["a.png"]
    table = pd.read_csv(tmp_path / "served" / DAY / "scores.csv")
    assert len(table) == 4 and table["part"].nunique() == 4  # a.png seen twice: two parts, both kept
    assert not errors  # a look with some parts scored goes on; the unreadable one is in the day's record
    assert [item["name"] for item in load_day(tmp_path / "served" / DAY).not_scored] == [str(watch / "broken.png")]


def test_a_file_still_being_written_waits_and_outputs_may_not_lie_in_the_watched_folder(pool_file, tmp_path):
    from musc.reference_pool import PoolError
    from musc.reference_pool.serving import Watcher, serve
    watch = tmp_path / "inbox"
    watch.mkdir()
    with pytest.raises(PoolError, match="^out: .* lies in the watched folder"):
        serve(pool_file, watch, watch / "results", looks=1)
    watcher = Watcher(watch)
    (watch / "growing.png").write_bytes(b"\x89PNG part")
    assert watcher.ready() == []  # first seen now
    with open(watch / "growing.png", "ab") as f:
        f.write(b" more")
    os.utime(watch / "growing.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert watcher.ready() == []  # changed since the last look: still being written
    assert watcher.ready() == [watch / "growing.png"]
    watcher.take([watch / "growing.png"])
    assert watcher.ready() == []  # taken as it is


@pytest.mark.slow
def test_musc_serve_scores_what_arrives_and_stops_on_sigterm(pool_file, tiny_dataset, tmp_path):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / ".prefect"),
           "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    (tmp_path / "inbox").mkdir()
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--pool", str(pool_file), "--watch",
                                "inbox", "--out", "served", "--interval", "0.2", "--threshold", "0.5"],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        files = parts_of(tiny_dataset, tmp_path / "inbox", {"x.png": "good/001.png", "y.png": "hole/001.png"})
        deadline = time.time() + 120
        while time.time() < deadline and "2 part(s)" not in (tmp_path / "serve.log").read_text():
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output = (tmp_path / "serve.log").read_text()
    assert process.returncode == 143 and "Traceback" not in output, output
    assert output.splitlines()[-1].startswith("stopped: interrupted by SIGTERM"), output
    day = next((tmp_path / "served").iterdir())
    served = pd.read_csv(day / "scores.csv")
    assert sorted(served["path"]) == ["../../inbox/x.png", "../../inbox/y.png"]  # named from the day's folder
    for row in served.itertuples():
        assert f"inbox/{Path(row.path).name}: score {row.score:.4f}  {row.decision}" in output
    alone = subprocess.run([sys.executable, "-m", "flows.cli", "score-new", "--pool", str(pool_file),
                            *map(str, files), "--out", str(tmp_path / "alone"), "--threshold", "0.5"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    expected = pd.read_csv(tmp_path / "alone" / "scores.csv")
    assert sorted(zip(served["part"], served["score"], served["decision"])) == \
        sorted(zip(expected["part"], expected["score"], expected["decision"]))
