"""Read-only locations (a read-only mount, a folder without write permission): every command that
must write there says so in one line naming the folder and what to do, exit status 2, no
traceback; what only reads works: ``musc inspect``, ``musc report ROOT --to ELSEWHERE``, and
``musc score-new`` against a pool on a read-only mount into a writable ``--out``."""
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_pool, run_musc, scored_day, snapshot

pytestmark = pytest.mark.slow  # musc commands in child processes, some seconds each


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only within the block: a read-only bind mount where this process may mount
    (root), else its write permission taken away. Yields what the file system says to a write."""
    folder = Path(folder)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = not subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode
        if mounted and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", str(folder)], capture_output=True)
            mounted = False
    changed = []
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without mount: a folder's permissions do not stop root")
        for entry in [folder, *folder.rglob("*")]:
            if entry.is_dir() and not entry.is_symlink():
                entry.chmod(entry.stat().st_mode & ~0o222)
                changed.append(entry)
    try:
        yield "Read-only file system" if mounted else "Permission denied"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        for entry in changed:
            entry.chmod(entry.stat().st_mode | 0o200)


def one_line_error(result, *parts: str) -> str:
    """The command failed with status 2 and one line starting ``error:`` holding each of ``parts``."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Errno" not in lines[0], lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def finished_run(run_copy):
    """A copy of a finished run's artifacts root, its evaluate artifact."""
    [evaluation] = [p for p in run_copy.rglob("evaluate/*.h5")]
    return run_copy, evaluation


def test_inspect_and_report_to_elsewhere_work_on_a_read_only_artifacts_root(finished_run, tmp_path):
    root, evaluation = finished_run
    before = snapshot(root)
    elsewhere = tmp_path / "reports"
    with read_only(root):
        shown = run_musc("inspect", evaluation, cwd=tmp_path)
        beside = run_musc("report", root, cwd=tmp_path)
        moved = run_musc("report", root, "--to", elsewhere, cwd=tmp_path)
        day = run_musc("report", root, "--to", elsewhere, cwd=tmp_path)  # again: the same pages, rewritten
    assert shown.returncode == 0 and "evaluate" in shown.stdout, shown.stderr[-3000:]
    one_line_error(beside, f"cannot write to {root}", f"write the reports elsewhere: musc report {root} --to ELSEWHERE")
    assert moved.returncode == 0 and day.returncode == 0, moved.stderr[-3000:]
    pages = sorted(elsewhere.rglob("report.html"))
    relative = evaluation.parent.parent.relative_to(root)  # <dataset>/<category>
    assert pages and all(relative.parts[0] in page.relative_to(elsewhere).parts for page in pages), pages
    assert (elsewhere / relative / "evaluate").is_dir()
    for written in moved.stdout.splitlines():
        assert Path(written.split(": ", 1)[1]).is_relative_to(elsewhere), written
    assert snapshot(root) == before  # nothing written beside the artifacts


def test_clean_of_a_read_only_artifacts_root_is_one_line(finished_run, tmp_path):
    root, evaluation = finished_run
    stray = evaluation.with_name("0" * 16 + ".h5")  # an artifact no run uses: clean would remove it
    shutil.copy(evaluation, stray)
    with read_only(root) as reason:
        listed = run_musc("clean", root, "--dry-run", cwd=tmp_path)
        removed = run_musc("clean", root, cwd=tmp_path)
    assert listed.returncode == 0 and stray.name in listed.stdout, listed.stderr[-3000:]
    one_line_error(removed, f"cannot write to {stray.parent} ({reason}): clean removes files where they are")
    assert stray.is_file()


@pytest.fixture
def day_scored(prefect_harness, pool_file, tiny_dataset, tmp_path):
    """A pool in a folder of its own, and a day scored against it."""
    (tmp_path / "pools").mkdir()
    pool = copy_pool(pool_file, tmp_path / "pools" / "line3.h5")
    view, paths = scored_day(pool, tiny_dataset, ["good/000.png", "hole/000.png"], tmp_path / "day", threshold=0.55)
    return pool, tmp_path / "day", paths


def test_score_new_against_a_pool_on_a_read_only_mount_writes_into_its_out(day_scored, tmp_path):
    pool, _, paths = day_scored
    with read_only(pool.parent):
        result = run_musc("score-new", "--pool", pool, "--threshold", "0.55", "--out", tmp_path / "new", *paths,
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "new" / "scores.csv").is_file() and len(result.stdout.strip().splitlines()) == 3


def _pool_state(pool: Path) -> tuple:
    """What a review may change beside the pool: the pool's content and its verdict history."""
    from musc.store import file_sha256
    history = pool.with_name(f"{pool.stem}.verdicts.csv")
    return file_sha256(pool), history.read_bytes() if history.is_file() else None


def test_review_with_the_pools_folder_or_the_days_folder_read_only_is_one_line_and_changes_nothing(
        day_scored, tiny_dataset, tmp_path):
    """Refused before anything is recorded: no verdict written, no part taken out of the pool, when
    the day's outputs could not be drawn again afterwards."""
    pool, day, paths = day_scored
    defect = Path(paths[1]).name
    assert run_musc("review", day, "--good", defect, cwd=tmp_path).returncode == 0  # called good first
    assert run_musc("pool", "add", "--pool", pool, day, cwd=tmp_path).returncode == 0  # so it joins the pool
    scored_day(pool, tiny_dataset, ["good/000.png", "hole/000.png"], day, threshold=0.55)  # the day against it
    before, state = snapshot(day), _pool_state(pool)
    with read_only(pool.parent) as reason:
        listed = run_musc("review", day, cwd=tmp_path)  # reading the day needs no write
        verdict = run_musc("review", day, "--defect", defect, cwd=tmp_path)
    assert listed.returncode == 0 and "flagged" in listed.stdout, listed.stderr[-3000:]
    one_line_error(verdict, f"verdicts: cannot write to {pool.parent} ({reason}): the verdicts are kept beside the pool")
    with read_only(day) as reason:
        verdict = run_musc("review", day, "--defect", defect, cwd=tmp_path)
        good = run_musc("review", day, "--good", Path(paths[0]).name, cwd=tmp_path)
        redrawn = run_musc("report", day, cwd=tmp_path)
    one_line_error(verdict, f"review: cannot write to {day} ({reason})")
    one_line_error(good, f"review: cannot write to {day} ({reason})")
    one_line_error(redrawn, f"cannot write to {day}", reason)
    assert snapshot(day) == before and _pool_state(pool) == state  # nothing recorded, the pool as it was


def test_the_daily_flow_with_its_pools_folder_read_only_stops_before_scoring(day_scored, tiny_dataset, tmp_path):
    """The history of days lives beside the pool: a pool in a folder the flow cannot write is
    refused before any part is scored, naming the folder."""
    from flows.daily import daily_folder_flow
    from musc.store import ReadOnlyLocation
    pool, _, _ = day_scored
    folder = tmp_path / "incoming" / "2026-12-02"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dataset / "fabric/test/good/000.png", folder / "a.png")
    with read_only(pool.parent) as reason:
        with pytest.raises(ReadOnlyLocation) as refused:
            daily_folder_flow(str(pool), str(tmp_path / "incoming"), day="2026-12-02",
                              decision={"threshold": 0.55}, review_wait_s=0)
    message = str(refused.value)
    assert message == (f"the history of days: cannot write to {pool.parent} ({reason}): the daily flow keeps each "
                       "day's summary beside the pool: put the pool in a folder the flow can write")
    assert not (folder / "musc").exists()  # nothing scored


def test_pool_add_into_a_read_only_folder_is_one_line(finished_run, tmp_path):
    root, evaluation = finished_run
    pools = tmp_path / "pools"
    pools.mkdir()
    with read_only(pools) as reason:
        result = run_musc("pool", "add", "--pool", pools / "line.h5", evaluation.parent.parent, cwd=tmp_path)
    one_line_error(result, f"cannot write to {pools} ({reason}): make it writable")
    assert list(pools.iterdir()) == []
