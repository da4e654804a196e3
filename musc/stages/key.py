"""The cache key of every stage, written once.

A stage's artifact lives at ``<stage>/<key>.h5`` where the key is a hash of exactly what the
artifact records: its code version, its settings (``config``: the deciding settings, see
``musc.inputs.config.StageSettings``) and the digests of its inputs by role. The same inputs and
settings always give the same file, and an artifact can be checked against the key it sits under
(``StageKey.of(artifact).value == path.stem``): a file copied or renamed under another key is not
used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import Artifact, stable_hash, stage_schema
from ..store.catalog import sibling_path

Ref = dict[str, str]  # {"stage", "path", "digest"}: what stages pass to each other


@dataclass(frozen=True)
class StageKey:
    stage: str
    config: dict[str, Any] = field(default_factory=dict)   # the deciding settings, as recorded
    inputs: dict[str, str] = field(default_factory=dict)   # role -> digest, as recorded

    @property
    def code_version(self) -> str:
        return stage_schema(self.stage).code_version

    @property
    def value(self) -> str:
        return stable_hash(self.code_version, self.config, self.inputs)

    def beside(self, upstream: Ref) -> Path:
        """The artifact path of this key in the category of an upstream artifact."""
        return sibling_path(upstream["path"], self.stage, self.value)

    @classmethod
    def recorded_in(cls, artifact: Artifact) -> "StageKey":
        return cls(artifact.stage, artifact.config, artifact.inputs)

    @staticmethod
    def mismatch(artifact: Artifact) -> str | None:
        """Why an artifact does not belong under its file name (another run's file copied or renamed
        there, or written by other code), or None when its record gives exactly its key."""
        recorded = StageKey.recorded_in(artifact)
        if artifact.attrs.get("code_version") != recorded.code_version:
            return f"written by {artifact.attrs.get('code_version')!r}, not {recorded.code_version!r}"
        if recorded.value != artifact.path.stem:
            return f"its recorded settings and inputs give key {recorded.value}, not {artifact.path.stem}"
        return None
