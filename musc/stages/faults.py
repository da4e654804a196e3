"""Fault-injection and work-counting hooks for the crash, retry and work tests. Read once from the
environment when this module is imported; when not armed (normal use) each hook is one comparison."""
from __future__ import annotations

import os
import signal
from typing import Callable


def _armed(variable: str) -> tuple[str, str] | None:
    stage, _, argument = os.environ.get(variable, "").partition(":")
    return (stage, argument) if stage and argument else None


KILL_AFTER = _armed("MUSC_FAULT")          # "<stage>:<n>": SIGKILL once n parts of that stage exist
KILL_ONCE = _armed("MUSC_KILL_ONCE")       # "<stage>:<n>:<marker file>": the same, once, while the marker exists
FAIL_ONCE = _armed("MUSC_FAIL_ONCE")       # "<stage>:<marker file>": fail while the marker exists
WORK_LOG = os.environ.get("MUSC_WORK_LOG")  # a file: one line appended per backbone forward and stage build


def fault_point(stage: str, parts_done: int | Callable[[], int]) -> None:
    """Kill the process (SIGKILL, as a crash or an OOM kill would) once ``parts_done`` parts of
    ``stage`` exist, when armed for that stage (``MUSC_KILL_ONCE``: only while its marker file
    exists, which it removes first, so that a retry goes through). ``parts_done`` may be a
    function: counted only then."""
    for armed, once in ((KILL_AFTER, False), (KILL_ONCE, True)):
        if armed is None or armed[0] != stage:
            continue
        count, _, marker = armed[1].partition(":")
        if not count.isdigit() or (once and not os.path.exists(marker)):
            continue
        done = parts_done() if callable(parts_done) else parts_done
        if done >= int(count):
            if once:
                os.unlink(marker)
            os.kill(os.getpid(), signal.SIGKILL)


def fail_once_point(stage: str) -> None:
    """Fail while the marker file exists, and remove it: the next try (a flow-run retry) goes through."""
    if FAIL_ONCE is None or FAIL_ONCE[0] != stage or not os.path.exists(FAIL_ONCE[1]):
        return
    os.unlink(FAIL_ONCE[1])
    raise RuntimeError(f"{stage}: injected failure (MUSC_FAIL_ONCE)")


def note_work(what: str) -> None:
    """Append ``what`` ("forward", "build <stage>") to ``MUSC_WORK_LOG`` when it is set: the tests
    count work across processes (a flow run's, a retry's) from it."""
    if WORK_LOG is None:
        return
    with open(WORK_LOG, "a") as log:
        log.write(what + "\n")
