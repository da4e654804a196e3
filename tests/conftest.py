import os
from pathlib import Path

import h5py
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "musc_reference_small.h5"
REAL_DATA = SHARED / "data" / "real"


@pytest.fixture(scope="session")
def reference():
    if not FIXTURE.exists():
        pytest.fail(f"parity fixture missing: {FIXTURE}")
    with h5py.File(FIXTURE, "r") as f:
        data = {}
        f.visititems(lambda name, obj: data.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        data["attrs"] = dict(f.attrs)
    return data
