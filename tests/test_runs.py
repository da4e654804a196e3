"""A run's process and its neighbours: determinism, concurrent runs, a full disk, an unwritable log,
kill -9, hundreds of tasks, commands started together on one new Prefect home."""
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from musc import store

from conftest import ROOT, RUN_FLAGS, TINY_CONFIG, alive, child_pids, run_category, run_musc


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_same_inputs_give_identical_results(tiny_dataset, tmp_path):
    first = run_category(tiny_dataset, tmp_path / "a")
    second = run_category(tiny_dataset, tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert (Path(first["outputs"]) / "metrics.csv").read_bytes() == (Path(second["outputs"]) / "metrics.csv").read_bytes()
    for name in ("maps", "image_scores", "image_scores_raw", "patch_map"):
        np.testing.assert_array_equal(store.open_artifact(first["classify"]["path"]).read(name),
                                      store.open_artifact(second["classify"]["path"]).read(name))


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_two_concurrent_runs_share_the_work(tiny_dataset, tmp_path):
    code = ("import sys, json; sys.path.insert(0, %r); from flows import category_flow; "
            "r = category_flow('mvtec_ad', %r, 'fabric', json.loads(sys.argv[1]), %r); "
            "print('RESULT', r['classify']['digest'])" % (str(ROOT), str(tiny_dataset), str(tmp_path / "artifacts")))
    import json
    children = []
    for number in range(2):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home{number}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        children.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(TINY_CONFIG)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True))
    outputs = [child.communicate(timeout=400)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs[0][-2000:] + outputs[1][-2000:]
    digests = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("RESULT")}
    assert len(digests) == 1  # both runs ended on the very same classify artifact
    computed = sum(out.count("extract fabric: computing") for out in outputs)
    assert computed == 1  # the extraction was done once; the other run waited and reused it
    for path in (tmp_path / "artifacts").rglob("*.h5"):
        assert store.valid_digest(path) is not None, path
    assert not list((tmp_path / "artifacts").rglob(".*.tmp-*"))




@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_disk_full_ends_with_one_line_naming_the_folder_and_the_rerun_recovers(tiny_dataset, small_disk, tmp_path):
    args = ["run", "--dataset", "mvtec_ad", "--root", tiny_dataset, *RUN_FLAGS, "--artifacts", small_disk / "a"]
    full = run_musc(*args, cwd=tmp_path)
    assert full.returncode == 2, full.stderr[-3000:]  # not 139 (a segmentation fault in HDF5's teardown)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(small_disk / "a") in errors[0] and "no space left" in errors[0], errors
    assert "free some space" in errors[0] and "Logging error" not in full.stderr
    assert not list(small_disk.rglob(".*.tmp-*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_musc(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.usefixtures("prefect_harness")
def test_a_log_file_that_cannot_be_written_is_said_in_the_line_not_in_logging_tracebacks(tmp_path, capsys):
    from flows.terminal import TracebacksToFile as _TracebacksToFile
    for log_file in (Path("/dev/full"), tmp_path / "a_file" / "musc-errors.log"):  # disk full; no folder
        (tmp_path / "a_file").write_text("")
        stream = logging.StreamHandler(sys.stdout)
        stream.addFilter(_TracebacksToFile(log_file))
        log = logging.getLogger(f"musc-test-{log_file.name}")
        log.addHandler(stream)
        for _ in range(20):
            try:
                raise RuntimeError("the real cause")
            except RuntimeError:
                log.exception("stage failed")
        log.removeHandler(stream)
        out, err = capsys.readouterr()
        assert "Logging error" not in err and "Traceback" not in out + err
        assert out.count("stage failed (traceback not saved: ") == 20, out


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_run_leaves_no_prefect_server_running(tiny_dataset, tmp_path):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / ".prefect"),
           "MUSC_FAULT": "extract:1"}  # the run SIGKILLs itself after its first batch
    env.pop("PREFECT_API_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", tiny_dataset,
                            *RUN_FLAGS, "--artifacts", tmp_path / "artifacts"], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    servers = set()
    while run.poll() is None:
        servers.update(child_pids(run.pid))
        time.sleep(0.05)
    assert run.returncode == -signal.SIGKILL
    assert servers, "the run started no server process"
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in servers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the temporary Prefect server outlived its run"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_a_run_of_hundreds_of_tiles_ends_cleanly(tiny_dataset, tmp_path):
    (tmp_path / "run.yaml").write_text("block_size: 1\nr_list: [1, 3, 5]\n")  # 12 images: 234 tiles
    result = run_musc("run", "--dataset", "mvtec_ad", "--root", tiny_dataset, *RUN_FLAGS, "--config",
                      tmp_path / "run.yaml", "--artifacts", tmp_path / "artifacts", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    batches = re.findall(r"Task run 'score r=\d (\d+) tile\(s\) \d+:\d+-\d+(?: to \d+:\d+-\d+)?' - Finished",
                         result.stderr)
    assert len(batches) >= 3 and sum(map(int, batches)) == 234  # gathered in tasks of some work each
    assert "Error flushing events" not in result.stderr and "Traceback" not in result.stderr


SERVE = """
import httpx
from flows.server import temporary_server
with temporary_server() as url:
    assert httpx.get(url + "/health", timeout=30).status_code == 200
print("served")
"""


@pytest.mark.slow
def test_commands_started_together_on_one_new_prefect_home_all_run(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "new_home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    started = [subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=400)[0] for process in started]
    assert [process.returncode for process in started] == [0, 0, 0], outputs
    assert all("served" in output for output in outputs)


@pytest.mark.slow
def test_a_temporary_server_start_waits_for_another_start_on_the_same_prefect_home(tmp_path):
    """Deterministic: while another start holds the Prefect home's start lock, a command waits on
    it (the kernel lists the blocked request in /proc/locks) and has started no server."""
    import fcntl
    import subprocess
    import sys

    from conftest import ROOT
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / ".musc-server-start.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        inode = os.fstat(held.fileno()).st_ino
        deadline = time.monotonic() + 120
        waiting = False
        while time.monotonic() < deadline and process.poll() is None and not waiting:
            waiting = any("->" in line and f" {process.pid} " in line and f":{inode} " in line
                          for line in Path("/proc/locks").read_text().splitlines())
            time.sleep(0.1)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        started_servers = children.read_text().split() if children.exists() else []
        fcntl.flock(held, fcntl.LOCK_UN)
    output = process.communicate(timeout=300)[0]
    assert waiting and started_servers == [], output
    assert process.returncode == 0 and "served" in output, output



def test_run_names_tell_runs_apart_and_a_typed_name_is_kept():
    from datetime import datetime, timedelta, timezone

    from flows.names import category_name, kept, stamped
    scheduled = datetime(2026, 12, 6, 2, 30, tzinfo=timezone(timedelta(hours=1)))
    made = stamped(category_name({"category": "fabric"}), scheduled)
    assert made == "fabric 2026-12-06 01:30"  # in UTC
    assert stamped("fabric", scheduled + timedelta(days=1)) != made  # the next night's run
    assert kept("bright-eagle", made) == made  # a name Prefect made up is replaced
    assert kept("rerun after the lamp fix", made) == "rerun after the lamp fix"  # a person's is kept
    assert kept(made, "anything") == made  # a retry keeps its run's name
    assert kept(None, made) == made


@pytest.mark.slow
def test_a_category_run_is_named_by_its_category_and_scheduled_start(reference_run):
    from prefect import get_client
    result, _ = reference_run
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(result["flow_run"]).name
    assert re.fullmatch(r"fabric \d{4}-\d\d-\d\d \d\d:\d\d", name), name
