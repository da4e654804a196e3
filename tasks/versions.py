"""Code version of each stage: bump one when a change to its code changes its output, so that
artifacts of the old code are not reused (it is part of each stage's cache key)."""
import musc

STAGE_VERSIONS = {"extract": "1", "aggregate": "1", "score": "1", "classify": "1", "evaluate": "1"}


def code_version(stage: str) -> str:
    return f"musc-{musc.__version__}/{stage}-{STAGE_VERSIONS[stage]}"
