"""Fault-injection hooks for the crash and retry tests. Read once from the environment when this
module is imported; when not armed (normal use) each hook is one comparison."""
from __future__ import annotations

import os
import signal
from typing import Callable


def _armed(variable: str) -> tuple[str, str] | None:
    stage, _, argument = os.environ.get(variable, "").partition(":")
    return (stage, argument) if stage and argument else None


KILL_AFTER = _armed("MUSC_FAULT")          # "<stage>:<n>": SIGKILL once n parts of that stage exist
FAIL_ONCE = _armed("MUSC_FAIL_ONCE")       # "<stage>:<marker file>": fail while the marker exists


def fault_point(stage: str, parts_done: int | Callable[[], int]) -> None:
    """Kill the process (SIGKILL, as a crash or an OOM kill would) once ``parts_done`` parts of
    ``stage`` exist, when armed for that stage. ``parts_done`` may be a function: counted only then."""
    if KILL_AFTER is None or KILL_AFTER[0] != stage or not KILL_AFTER[1].isdigit():
        return
    done = parts_done() if callable(parts_done) else parts_done
    if done >= int(KILL_AFTER[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def fail_once_point(stage: str) -> None:
    """Fail while the marker file exists, and remove it: the next try (a flow-run retry) goes through."""
    if FAIL_ONCE is None or FAIL_ONCE[0] != stage or not os.path.exists(FAIL_ONCE[1]):
        return
    os.unlink(FAIL_ONCE[1])
    raise RuntimeError(f"{stage}: injected failure (MUSC_FAIL_ONCE)")
