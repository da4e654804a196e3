"""The ``musc`` command's entry point: a stop asked for while Python is still loading the command
ends it with the one line of any stop (``flows.stopping.stop_while_loading``); then the command
line (``flows.cli``). ``python -m flows.cli`` does the same first."""
from __future__ import annotations

from .stopping import stop_while_loading


def main() -> None:
    stop_while_loading()
    from .cli import app
    app()
