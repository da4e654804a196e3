"""The code of an earlier commit beside this tree, for benchmarks that measure both in one run."""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def commit_tree(commit: str) -> Iterator[Path]:
    """A git worktree of ``commit``, removed when the block ends."""
    worktree = Path(tempfile.mkdtemp()) / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), commit], cwd=HERE, check=True,
                   capture_output=True)
    try:
        yield worktree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=HERE, capture_output=True)
