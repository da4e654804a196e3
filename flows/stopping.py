"""A command stopped by SIGTERM or SIGINT: promptly, keeping what is finished, in one line.

The main thread gets ``Interrupted`` from the signal handler installed here. Inside a Prefect flow,
SIGTERM reaches Prefect's own handler first: it raises ``TerminationSignal``, the flow engine
marks its runs crashed, and then sends the signal again to the handler it had replaced (ours).
Work in other threads (a Prefect task thread extracting a category, a tile) stops at its next
batch or tile: ``Interrupted`` is raised there from the progress it reports
(``musc.progress.TRACKER``). Those threads learn of the signal through the interpreter's wakeup
file descriptor, which is written whichever Python handler runs, so they learn of it also while
Prefect's handler holds SIGTERM. The temporary Prefect server runs in a session of its own (a
signal to the command's process group does not reach it) and is stopped after the flow
(``flows.server``). Should the stop take longer than ``GRACE_SECONDS`` (a stage that reports no
progress), the process ends anyway: the server stopped, the line printed, exit status 128 +
signal. Either way what was written is complete (every write is atomic) and the next run of the
same command reuses it; what was in progress is redone, as after a ``kill -9``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 10.0  # from the signal to the end of the process, at most (then it ends at once)


class Interrupted(BaseException):
    """SIGTERM or SIGINT asked the command to stop (a BaseException: no ``except Exception`` in the
    work swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)


def stop_message(signum: int) -> str:
    return (f"interrupted by {signal.Signals(signum).name}; finished work is kept, run the same command again "
            "to resume")


def _stopped_while_loading(signum: int, frame) -> None:
    os.write(2, f"stopped: {stop_message(signum)}\n".encode())
    os._exit(128 + signum)


def stop_while_loading() -> None:
    """Until the command's work starts (``stop_on_signals``, which gives this back when it ends),
    SIGINT and SIGTERM end the process at once with the stop line: a stop asked for while Python
    still imports the command (Ctrl-C at once, a job cancelled as it starts) is never a traceback
    from inside an import. Installed first thing by ``flows.entry`` and ``python -m flows.cli``."""
    for number in STOP_SIGNALS:
        signal.signal(number, _stopped_while_loading)


class _State:
    """The running command's stop: the signal asked for (None: none), whether the main thread's
    handler raised already, whether the line was printed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.command = 0  # which command of this process (tests run several)
        self.reset()

    def reset(self) -> None:
        self.command += 1
        self.requested: int | None = None
        self.raised = False
        self.announced = False
        self.active = False
        self.announce: Callable[[int], None] = lambda signum: None
        self.quieted: list[tuple[logging.Handler, logging.Filter]] = []


STATE = _State()


def requested() -> int | None:
    """The stop signal received by this command, if any."""
    return STATE.requested


def stop_signal(error: BaseException) -> int | None:
    """The signal that ended the command with ``error``: the one in ``Interrupted``, SIGINT for a
    KeyboardInterrupt, the one in Prefect's ``TerminationSignal``; and whatever error ends a
    command that was asked to stop (a stage abandoned, a task cancelled) is that stop."""
    if isinstance(error, Interrupted):
        return error.signum
    if STATE.requested is not None:
        return STATE.requested
    if isinstance(error, KeyboardInterrupt):
        return int(signal.SIGINT)
    if type(error).__name__ == "TerminationSignal" and isinstance(getattr(error, "signal", None), int):
        return int(error.signal)
    return None


def announce(signum: int) -> None:
    """Print the one line (once per command, whichever thread gets here first)."""
    with STATE.lock:
        if STATE.announced:
            return
        STATE.announced = True
    STATE.announce(signum)


class _Quiet(logging.Filter):
    """Once a stop is asked for, the terminal keeps only the one line: Prefect's lines about the
    crashed runs (still sent to its server) stay off it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _quiet_console() -> None:
    quiet = _Quiet()
    loggers = [logging.getLogger()] + [logger for logger in list(logging.root.manager.loggerDict.values())
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(quiet)
                STATE.quieted.append((handler, quiet))


def _request(signum: int) -> None:
    """A stop signal arrived (any thread): remember the first, quiet the terminal, start the clock."""
    with STATE.lock:
        if STATE.requested is not None or not STATE.active:
            return
        STATE.requested = int(signum)
    _quiet_console()
    threading.Thread(target=_end_after_grace, args=(int(signum), STATE.command), name="musc-stop-deadline",
                     daemon=True).start()


def _end_after_grace(signum: int, command: int) -> None:
    time.sleep(GRACE_SECONDS)
    if not STATE.active or STATE.command != command:
        return
    announce(signum)
    from .server import stop_servers
    with contextlib.suppress(Exception):
        stop_servers(timeout=3)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


def _handler(signum: int, frame) -> None:
    """The main thread's handler: ``Interrupted`` the first time; later signals (a second Ctrl-C,
    Prefect sending SIGTERM again) are noted only, so that the stop's own clean-up runs."""
    _request(signum)
    with STATE.lock:
        if STATE.raised:
            return
        STATE.raised = True
    raise Interrupted(signum)


class _StopAtBoundary:
    """A progress listener: work that reports a batch or a tile done after a stop was asked for
    stops there (its part is written: the next run reuses it)."""

    def update(self, job, event: str) -> None:
        if event == "advance" and STATE.requested is not None:
            raise Interrupted(STATE.requested)


def _watch(reader: socket.socket) -> None:
    """The wakeup file descriptor's reader: each byte is a signal number."""
    while True:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        for number in data:
            if number in STOP_SIGNALS:
                _request(number)


@contextlib.contextmanager
def stop_on_signals(announce_line: Callable[[int], None]) -> Iterator[None]:
    """Within the block (the command's work, in the main thread), SIGTERM and SIGINT stop it as
    described above; ``announce_line(signum)`` prints the one line. Elsewhere than in the main
    thread (a test's runner), nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from musc.progress import TRACKER
    STATE.reset()
    STATE.announce, STATE.active = announce_line, True
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(reader,), name="musc-stop-watch", daemon=True)
    watcher.start()
    listener = _StopAtBoundary()
    TRACKER.add_listener(listener)
    try:
        for number in STOP_SIGNALS:
            signal.signal(number, _handler)
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(old_wakeup)
        TRACKER.remove_listener(listener)
        writer.close()
        watcher.join(timeout=1)
        reader.close()
        with STATE.lock:
            STATE.active = False
        for handler, quiet in STATE.quieted:
            handler.removeFilter(quiet)
