"""The temporary Prefect server of one ``musc`` command, tied to the command's life.

Prefect's own temporary server is a child process that outlives a ``kill -9`` of its parent (it is
reparented to PID 1 and keeps about 230 MB). We start the same server (Prefect's public app
factory under uvicorn, the UI off) as our child, ask Linux to end it when its parent dies
(``PR_SET_PDEATHSIG``), and point the command's Prefect client at it, with flow-run heartbeats
off (see below). A PREFECT_API_URL given by the user is used as it is, heartbeats included.

The server runs in a session of its own: a SIGTERM or SIGINT sent to the command's process group
(Ctrl-C in a terminal, ``kill -- -PGID``, a CI job's end) does not reach it, so the command's flow
can still record its stop, and the server is stopped last, by this process, once the flow has
stopped (``flows.stopping``).

Its own log goes to an unlinked temporary file, not to the terminal: stopping a server whose
task-run recorder still has a backlog (a run of 1,395 score tiles: the recorder writes one event
per transaction by default) cancels that flush, and Prefect logs each cancelled flush as an
"Error flushing events" traceback although the run succeeded. The recorder here writes in
batches, so it keeps up; what remains at the stop is the server's business, shown only when it
fails to start.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
from . import PREFECT_STARTUP_SECONDS as STARTUP_SECONDS  # the one start-up timeout


def _die_with_parent(parent: int):
    """For the child, between fork and exec: SIGTERM when the parent dies (also if it already has)."""
    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
    return arm


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, url: str, log) -> None:
    import httpx
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            last = (log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
            raise _Exited(f"the temporary Prefect server exited with status {process.returncode} ({last})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the temporary Prefect server did not answer within {STARTUP_SECONDS} s")


START_ATTEMPTS = 3


class _Exited(RuntimeError):
    """The server process ended before it answered."""


@contextlib.contextmanager
def _one_start_at_a_time() -> Iterator[None]:
    """Starts of temporary servers on one Prefect home, one at a time (a lock file in PREFECT_HOME,
    held until the server answers): the first start on a new home creates and migrates its
    database, and a second server starting meanwhile exits (status 3). Without a writable home,
    no lock (the start is retried instead)."""
    from prefect.settings import PREFECT_HOME
    try:
        home = Path(PREFECT_HOME.value()).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        handle = open(home / ".musc-server-start.lock", "a+")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start(env: dict) -> tuple[subprocess.Popen, str, object]:
    """(process, API URL, log) of a server that answers; a server that exits while starting (a port
    taken meanwhile, a database busy) is started again, at most START_ATTEMPTS times."""
    for attempt in range(START_ATTEMPTS):
        port = _free_port()
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
        log = tempfile.TemporaryFile()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log,  # noqa: PLW1509 - preexec: see above
                                   preexec_fn=_die_with_parent(os.getpid()), start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            _wait_healthy(process, url, log)
            return process, url, log
        except _Exited:
            log.close()
            if attempt == START_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
        except BaseException:
            process.kill()
            process.wait()
            log.close()
            raise
    raise AssertionError("unreachable")


def _drain_clients() -> None:
    """Send what Prefect's client still holds (logs, events) while the server is up: drained only
    at exit, they would wait on a stopped server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=30)


_RUNNING: set[subprocess.Popen] = set()  # this process's temporary servers, for stop_servers


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _RUNNING.discard(process)


def stop_servers(timeout: float = 10) -> None:
    """Stop every temporary server this process started (a command ending at once, on a signal
    whose stop took too long)."""
    for process in list(_RUNNING):
        _stop(process, timeout)


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Within the block, Prefect talks to a server that ends with this process, however it ends.
    Call it from the main thread: Linux ties the child to the thread that started it."""
    if os.environ.get("PREFECT_API_URL") or sys.platform != "linux":
        yield os.environ.get("PREFECT_API_URL")
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200"}
    with _one_start_at_a_time():
        process, url, log = _start(env)
    _RUNNING.add(process)
    try:
        os.environ["PREFECT_API_URL"] = url  # for child processes (Dask workers)
        # Heartbeats let a long-lived server mark crashed runs; nothing watches them on a server that
        # ends with the command, and each flow run's end waits up to 1 s for the heartbeat thread.
        with temporary_settings(updates={PREFECT_API_URL: url, "flows.heartbeat_frequency": None}):
            yield url
    finally:
        _drain_clients()
        os.environ.pop("PREFECT_API_URL", None)
        _stop(process)
        log.close()
