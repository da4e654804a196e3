"""The terminal side of the ``musc`` command: Prefect's environment, errors as one line, tracebacks
kept in a log file, and the progress bars.

Errors in the input (configuration, dataset, artifact) print one line naming the field or file and
exit with status 2, and so does a write the file system refused (a full disk, a read-only
location), wherever it happened; anything else prints one line and exits with status 1.
SIGTERM and SIGINT stop the command promptly with one line, ``stopped: ...``, and exit status
128 + signal (``flows.stopping``). ``--debug`` (``SESSION.debug``) shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from flows import use_prefect_startup_timeout
from musc.errors import MuscError

from . import stopping

USER_ERRORS = (MuscError,)  # everything a user can cause and mend: one line, exit status 2
console = Console(stderr=True, markup=False)  # errors and warnings; results go to stdout (text as it is: no markup)
T = TypeVar("T")


@dataclass
class Session:
    """What the error handling knows of the running command."""
    debug: bool = False  # --debug: tracebacks on the terminal, errors raised as they are
    artifacts: Path = Path(".")  # named by a disk-full error that carries no file name


SESSION = Session()


def shown(path: str | Path) -> str:
    """A file as the terminal shows it: from the working directory when under it, else whole."""
    whole = os.path.abspath(path)
    return os.path.relpath(whole) if Path(whole).is_relative_to(os.getcwd()) else whole


def prefect_environment() -> None:
    """Serverless (ephemeral) Prefect unless PREFECT_API_URL names a server; no telemetry."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # the client's telemetry notice and telemetry, off
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    use_prefect_startup_timeout()  # flows/__init__.py: the one start-up timeout


# Errors: one line on the terminal ------------------------------------------------------------------

ERROR = Text("error:", style="bold red")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning on the terminal as a user reads it: ``warning: <message>``, one line (the
    code location only with --debug)."""
    where = f" ({filename}:{lineno}, {category.__name__})" if SESSION.debug else ""
    console.print(Text("warning:", style="yellow"), f"{message}{where}", highlight=False, soft_wrap=True)


def run_guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; an error ends the command with one line: status 2 for an error in
    the input, a full disk or a read-only location, 1 for anything else; SIGTERM or SIGINT stops
    it (``stopped``). Warnings show as one line each (``show_warning``)."""
    shown, warnings.showwarning = warnings.showwarning, show_warning
    try:
        with stopping.stop_on_signals(announce_stop):
            return fn(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - a stop, then errors: one line each
        signum = stopping.stop_signal(error)
        if signum is not None and not SESSION.debug:
            stopped(signum)
        if isinstance(error, USER_ERRORS):
            fail(error)
        if not isinstance(error, Exception) or SESSION.debug:
            raise
        written = refused_write(error)
        if written is not None:
            fail(written)
        console.print(ERROR, f"{type(error).__name__}: {first_line(error)} (rerun with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    finally:
        warnings.showwarning = shown


@contextlib.contextmanager
def advice_when_read_only(advice: str) -> Iterator[None]:
    """Within the block, a write refused by a read-only or forbidden location
    (``musc.store.ReadOnlyLocation``) says ``advice`` (this command's way out) as what to do."""
    from musc.store import ReadOnlyLocation
    try:
        yield
    except Exception as error:  # noqa: BLE001 - a refused write, wherever it was made; others go on
        mapped = error if isinstance(error, ReadOnlyLocation) else refused_write(error)
        if isinstance(mapped, ReadOnlyLocation):
            raise mapped.advised(advice) from None
        raise


STOPPED = Text("stopped:", style="bold yellow")


def announce_stop(signum: int) -> None:
    console.print(STOPPED, stopping.stop_message(signum), highlight=False, soft_wrap=True)


def stopped(signum: int) -> None:
    """End the command stopped by a signal: one line (once), exit status 128 + signal."""
    stopping.announce(signum)
    raise typer.Exit(128 + signum)


def fail(error: BaseException) -> None:
    """End the command for an error in its input: one line, status 2 (``--debug``: raised)."""
    if SESSION.debug:
        raise error
    console.print(ERROR, first_line(error) or type(error).__name__, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def refused_write(error: BaseException) -> Exception | None:
    """A write the file system refused, anywhere in the chain (a figure, a CSV, a log, an artifact,
    a removal): a full disk, or a read-only file system (which only a write gets), as one line
    naming the folder and what to do (``musc.store.writing.refused``, the one mapping; permission
    errors are mapped where we write, since a read gets them too)."""
    import errno

    from musc.store.writing import NO_SPACE, refused
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and (error.errno in NO_SPACE or error.errno == errno.EROFS):
            folder = Path(os.fsdecode(error.filename)).parent if isinstance(error.filename, (str, bytes)) \
                else SESSION.artifacts
            return refused(error, folder)
        error = error.__cause__ or error.__context__
    return None


# Tracebacks logged by Prefect: to a file, not the terminal -------------------------------------------

class QuietFileHandler(logging.FileHandler):
    """A log file that, when it cannot be written (disk full, read-only folder), says so once
    instead of printing a "Logging error" traceback for every record."""
    failure: str | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        self.failure = getattr(error, "strerror", None) or str(error) or type(error).__name__


class TracebacksToFile(logging.Filter):
    """Keep tracebacks off the terminal: the full record goes to a log file, the console gets the
    one-line message (``--debug`` leaves the console as it is)."""

    def __init__(self, log_file: Path):
        super().__init__()
        self.log_file = log_file
        self.handler: QuietFileHandler | None = None
        self.failure: str | None = None

    def _save(self, record: logging.LogRecord) -> str:
        """Where the traceback went, or why it could not be saved (the message keeps the real cause)."""
        if self.handler is None and self.failure is None:
            try:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                self.handler = QuietFileHandler(self.log_file)
                self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            except OSError as error:
                self.failure = error.strerror or str(error)
        if self.handler is not None:
            self.handler.handle(record)
            self.failure = self.failure or self.handler.failure
        if self.failure is not None:
            return f"traceback not saved: {self.log_file}: {self.failure}"
        return f"traceback in {self.log_file}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            where = self._save(record)
            record.msg = f"{record.getMessage().splitlines()[0]} ({where})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def route_tracebacks(log_file: Path) -> None:
    """Tracebacks that Prefect logs go to ``log_file``; the terminal keeps their first line."""
    if SESSION.debug:
        return
    trap = TracebacksToFile(log_file.resolve())
    for handler in _console_handlers("", "prefect._internal"):
        handler.addFilter(trap)


def _console_handlers(*loggers: str) -> list[logging.StreamHandler]:
    """The terminal handlers of these loggers ("" the root), with Prefect's set up first (later
    set-ups are incremental: the filters stay)."""
    from prefect.logging.configuration import setup_logging
    setup_logging()
    return [handler for name in loggers for handler in logging.getLogger(name or None).handlers
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]


# Progress bars ---------------------------------------------------------------------------------------

class QuietConsole(logging.Filter):
    """Drops Prefect's per-task INFO lines from the terminal (warnings and errors still show); the
    progress bars say what happens. The records still reach a Prefect server's log. Kept: the first
    run's "View at <url>" line, which a server gives (where to see the run in its UI)."""

    def __init__(self, show_url: bool):
        super().__init__()
        self.shown_url = not show_url  # a command's own temporary server has no UI to view

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if not self.shown_url and "View at http" in record.getMessage():
            self.shown_url = True
            return True
        return False


class TerminalProgress:
    """A rich progress bar per stage and category (rate, time left, then the time it took), fed
    by ``musc.progress.TRACKER``; the bars stay on the screen as the summary of each stage."""

    def __init__(self, out: Console):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(
            TextColumn("{task.description:<20}"), BarColumn(bar_width=24),
            TextColumn("{task.fields[count]:<16}"),
            TextColumn("{task.fields[rate]:>15}"), TimeRemainingColumn(elapsed_when_finished=True),
            TextColumn("{task.fields[note]}"), console=out, refresh_per_second=4)
        self.rows: dict[int, int] = {}

    def update(self, job, event: str) -> None:
        if event == "start":
            self.rows[id(job)] = self.progress.add_task(f"{job.label} {job.stage}", total=max(job.total, 1),
                                                        count=self._count(job), rate="", note="")
            return
        row = self.rows.get(id(job))
        if row is None:
            return
        rate = f"{job.rate:.1f} {job.unit}/s" if job.rate and job.unit not in ("step", "degrees") else ""
        if event == "end":
            done = max(job.total, 1) if job.note in ("", "reused") else job.done
            self.progress.update(row, completed=done, count=self._count(job), rate=rate, note=job.note)
            self.progress.stop_task(row)
        else:
            self.progress.update(row, completed=job.done, count=self._count(job), rate=rate)

    @staticmethod
    def _count(job) -> str:
        return "" if job.note == "reused" else f"{min(job.done, job.total):>4}/{job.total:<4} {job.unit}"

    def __enter__(self):
        from musc.progress import TRACKER
        self.progress.start()
        TRACKER.add_listener(self)
        return self

    def __exit__(self, *exc):
        from musc.progress import TRACKER
        TRACKER.remove_listener(self)
        self.progress.stop()


def run_output(verbose: bool, server_given: bool = False):
    """In a terminal: progress bars, and Prefect's INFO lines off the screen (``--verbose`` keeps
    them, without bars) but for the run's URL when ``server_given`` (PREFECT_API_URL named a
    server: its UI shows the run). Not a terminal (CI, a log file): Prefect's lines as they are."""
    out = Console(markup=False)
    if verbose or not out.is_terminal:
        return contextlib.nullcontext()
    quiet = QuietConsole(show_url=server_given)
    for handler in _console_handlers("", "uvicorn", "fastapi"):
        handler.addFilter(quiet)
    return TerminalProgress(out)
