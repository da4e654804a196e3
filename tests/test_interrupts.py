"""SIGTERM and SIGINT: a command stops promptly with one line and exit status 128 + signal, work in
other threads stops at its next batch or tile, the temporary Prefect server is stopped last and
none is left running, and the same command again resumes from what was finished."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer

from conftest import ROOT, RUN_FLAGS, alive, child_pids, snapshot

STOP_LINE = "stopped: interrupted by {}; finished work is kept, run the same command again to resume"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_command_in_one_line_with_status_128_plus_signal(signum, capsys):
    from flows import terminal

    def work():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # interrupted at once
        return "finished"
    started = time.monotonic()
    with pytest.raises(typer.Exit) as stopped:
        terminal.run_guarded(work)
    assert stopped.value.exit_code == 128 + signum and time.monotonic() - started < 3
    assert capsys.readouterr().err.strip().splitlines() == [STOP_LINE.format(signal.Signals(signum).name)]
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # handlers given back


def test_work_in_another_thread_stops_at_its_next_batch_and_keeps_the_finished_ones(capsys):
    """A task thread (as Prefect's runs a stage) reports each batch through the progress tracker:
    after the signal it stops at the next one, while the main thread waits for it."""
    from flows import terminal
    from musc.progress import TRACKER
    done, failure = [], []

    def stage():
        job = TRACKER.job("fabric", "extract", 1000, "images")
        try:
            for batch in range(1000):
                time.sleep(0.01)  # a batch's work
                done.append(batch)  # its part written
                job.advance()
        except BaseException as error:  # noqa: BLE001 - what stopped it
            failure.append(error)
        finally:
            job.finish("failed" if failure else "")

    def work():
        worker = threading.Thread(target=stage)
        worker.start()
        try:
            while len(done) < 3:
                time.sleep(0.005)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the main thread is interrupted at once
        finally:
            worker.join()  # however the flow ends, Prefect's task runner waits for its threads

    with pytest.raises(typer.Exit) as stopped:
        terminal.run_guarded(work)
    assert stopped.value.exit_code == 143
    assert 3 <= len(done) < 50 and type(failure[0]).__name__ == "Interrupted"
    assert capsys.readouterr().err.strip().splitlines()[-1] == STOP_LINE.format("SIGTERM")


def test_without_a_signal_errors_and_results_are_as_before(capsys):
    from flows import terminal
    from musc.store import ArtifactError
    def broken():
        raise ArtifactError("x.h5: broken")
    assert terminal.run_guarded(lambda: 7) == 7
    with pytest.raises(typer.Exit) as failed:
        terminal.run_guarded(broken)
    assert failed.value.exit_code == 2 and capsys.readouterr().err.strip() == "error: x.h5: broken"


SLOW = "batch_size: 1\n"  # 12 extraction batches, each a part: a stop lands between two of them


def _musc_run(data, cwd):
    """``musc run`` of the tiny dataset into cwd/artifacts (the command, its environment), as run_musc."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(cwd / ".prefect"),
           "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    (cwd / "run.yaml").write_text(SLOW)
    return [sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", str(data), *map(str, RUN_FLAGS),
            "--config", str(cwd / "run.yaml"), "--artifacts", str(cwd / "artifacts")], env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_of_a_run_stops_it_and_the_same_command_resumes(tiny_dataset, tmp_path,
                                                                                    signum):
    cwd = tmp_path
    command, env = _musc_run(tiny_dataset, cwd)
    artifacts = cwd / "artifacts"
    run = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group, as a shell job or a CI step
    servers = set()
    deadline = time.monotonic() + 300
    while run.poll() is None and not list(artifacts.rglob("*.parts/*.h5")) and time.monotonic() < deadline:
        servers.update(child_pids(run.pid))
        time.sleep(0.02)
    assert run.poll() is None, run.communicate()[1][-3000:]
    servers.update(child_pids(run.pid))
    os.killpg(run.pid, signum)  # the whole group: the command and, were it in the group, its server
    sent = time.monotonic()
    try:
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    took = time.monotonic() - sent
    assert run.returncode == 128 + signum, err[-3000:]
    assert took < 20, took
    assert err.strip().splitlines()[-1] == STOP_LINE.format(signal.Signals(signum).name)
    assert "Traceback" not in err and "All connection attempts failed" not in err, err[-3000:]
    assert servers, "the run started no server process"
    assert not [pid for pid in servers if alive(pid)], "a temporary Prefect server outlived its run"
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # nothing of the group is left
    assert not list(artifacts.rglob(".*.tmp-*"))

    parts = sorted(artifacts.rglob("extract/*.parts/batch_*.h5"))
    extracted = list(artifacts.rglob("extract/*.h5"))
    finished = snapshot(artifacts)
    again = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = snapshot(artifacts)
    assert all(after[name] == identity for name, identity in finished.items())  # finished artifacts reused
    batches = again.stderr.count("extract: batch ")  # the batches computed again
    assert batches == (0 if extracted else 12 - len(parts)), (batches, len(parts))


SCRIPT = Path(sys.executable).with_name("musc")  # the console script pip installed (flows.entry:main)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("launch", ["module", "script"])
def test_a_signal_while_the_command_loads_is_the_same_one_line(tmp_path, signum, launch):
    """Ctrl-C at once, or a job cancelled as it starts, while Python still imports the command
    (``python -m flows.cli`` or the installed ``musc``): the stop line and 128 + signal, never a
    traceback from inside an import."""
    if launch == "script" and not SCRIPT.is_file():
        pytest.skip(f"no console script {SCRIPT} (pip install -e . makes it)")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    start = [sys.executable, "-m", "flows.cli"] if launch == "module" else [str(SCRIPT)]
    command = subprocess.Popen([*start, "inspect", str(tmp_path / "none.h5")],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.25)  # importing the command takes longer (typer, rich, the settings' declarations)
    command.send_signal(signum)
    out, err = command.communicate(timeout=60)
    if command.returncode == 2:  # this machine loaded it within 0.25 s: the command ran (its one error line)
        pytest.skip("the command finished loading before the signal")
    assert command.returncode == 128 + signum, err
    assert err.strip().splitlines() == [STOP_LINE.format(signal.Signals(signum).name)]
