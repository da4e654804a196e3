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

ROOT = Path(__file__).resolve().parents[1]
DEMO_BACKBONE = str(ROOT / "configs" / "demo_vit.json")
TINY_CONFIG = {"backbone": DEMO_BACKBONE, "pretrained": "none", "image_size": 64, "layers": [0, 1, 2, 3],
               "batch_size": 4, "block_size": 4, "device": "cpu", "r_list": [1, 3]}


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect (ephemeral, temporary database) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from musc.inputs.synthetic import make_dataset
    return make_dataset(tmp_path_factory.mktemp("data"), n_good=6, n_per_defect=2, size=64, seed=1,
                        categories=("fabric",))


def snapshot(root):
    """Identity of every artifact file under root: a rewritten file gets a new inode/mtime."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in Path(root).rglob("*.h5") if ".parts" not in str(p)}


def run_category(data, artifacts, **changes):
    from flows import category_flow
    return category_flow("mvtec_ad", str(data), "fabric", {**TINY_CONFIG, **changes}, str(artifacts))


def stage_files(snap, stage):
    return {k: v for k, v in snap.items() if f"/{stage}/" in k}


def read_all(ref):
    """Every dataset of an artifact, by name."""
    import h5py
    from musc import store
    artifact = store.open_artifact(ref["path"])
    out = {}
    with h5py.File(artifact.path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_arrays(a, b):
    import numpy as np
    assert set(a) == set(b)
    for name in a:
        if a[name].dtype.kind in "fiub":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            assert list(a[name]) == list(b[name]), name


@pytest.fixture(scope="session")
def reference_run(prefect_harness, tiny_dataset, tmp_path_factory):
    """One uninterrupted local run of the tiny dataset, to compare other runs against."""
    artifacts = tmp_path_factory.mktemp("reference_artifacts")
    return run_category(tiny_dataset, artifacts), artifacts
