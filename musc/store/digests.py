"""Digests: the short key of JSON-able items (``stable_hash``), the SHA-256 of a file, and a file's
SHA-256 remembered while its identity stays the same, and only once a later change must show."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any


def stable_hash(*items: Any, length: int = 16) -> str:
    """A short hex key of JSON-serialisable items (sorted keys: the same inputs, the same key)."""
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Trusting a file's identity (inode, size, modification and status-change times) instead of its
# bytes is safe only once a later change must give another identity: a write within the same tick
# of the file system's clock keeps the times (one second on ext3 or HFS+, two on FAT, a kernel tick
# on ext4). So an identity is trusted, and remembered, only when its times were older than that
# resolution when the file was hashed; a younger one is hashed each time.
COARSE_TIMESTAMP_NS = 2_000_000_000   # whole-second times (FAT's are 2 s apart)
FINE_TIMESTAMP_NS = 50_000_000        # sub-second times: a few kernel ticks (at most 10 ms each)


def _settle_ns(*times_ns: int) -> int:
    """How old timestamps must be before a change is sure to move them: whole seconds (or coarser)
    show a coarse file system."""
    return COARSE_TIMESTAMP_NS if all(t % 1_000_000_000 == 0 for t in times_ns) else FINE_TIMESTAMP_NS


def settled(times_ns: tuple[int, ...], at_ns: int | None = None) -> bool:
    """Whether a change made after ``at_ns`` (default: now) must give other timestamps than these."""
    at_ns = time.time_ns() if at_ns is None else at_ns
    return at_ns - max(times_ns) >= _settle_ns(*times_ns)


def file_key(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@functools.lru_cache(maxsize=65536)
def _cached_file_sha256(path: str, key: tuple[int, ...]) -> str:
    return file_sha256(path)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, cached while its identity (device, inode, size, modification and
    status-change times) stays the same, and only once those times are settled (see ``settled``)."""
    stat = os.stat(path)
    if not settled((stat.st_mtime_ns, stat.st_ctime_ns)):
        return file_sha256(path)
    return _cached_file_sha256(str(path), file_key(stat))


def forget() -> None:
    """Forget the file digests remembered in this process."""
    _cached_file_sha256.cache_clear()
