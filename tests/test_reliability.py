"""Faults a scheduled inspection run meets: unreadable files, too few images, concurrent runs,
determinism."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY_CONFIG, run_category
from musc import store
from musc.inputs.datasets import DatasetError

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_unreadable_images_are_skipped_listed_and_reported(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    good = data / "fabric/test/good"
    (good / "900.png").write_bytes(b"")
    (good / "901.png").write_text("this is not a PNG")
    truncated = (good / "000.png").read_bytes()[:100]
    (good / "902.png").write_bytes(truncated)
    result = run_category(data, tmp_path / "artifacts")
    extract = store.open_artifact(result["extract"]["path"])
    skipped = list(extract.read("skipped"))
    assert len(skipped) == 3 and all("unreadable image" in s for s in skipped)
    assert {Path(s.split(":")[0]).name for s in skipped} == {"900.png", "901.png", "902.png"}
    assert len(extract.read("names")) == 12
    report = (Path(result["outputs"]) / "report.md").read_text()
    assert "Skipped images" in report and "901.png" in report


def test_fewer_than_two_images_is_a_clear_error(tmp_path):
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", n_good=1, n_per_defect=0, size=32, categories=("fabric",))
    with pytest.raises(DatasetError, match="needs at least 2"):
        run_category(data, tmp_path / "artifacts")


def test_k_larger_than_n_is_rejected_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="^k_list: window size 40"):
        run_category(tiny_dataset, tmp_path / "artifacts", k_list=[1, 40])
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_same_inputs_give_identical_results(tiny_dataset, tmp_path):
    first = run_category(tiny_dataset, tmp_path / "a")
    second = run_category(tiny_dataset, tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert (Path(first["outputs"]) / "metrics.csv").read_bytes() == (Path(second["outputs"]) / "metrics.csv").read_bytes()
    for name in ("maps", "image_scores", "image_scores_raw", "patch_map"):
        np.testing.assert_array_equal(store.open_artifact(first["classify"]["path"]).read(name),
                                      store.open_artifact(second["classify"]["path"]).read(name))


@pytest.mark.slow
def test_two_concurrent_runs_share_the_work(tiny_dataset, tmp_path):
    code = ("import sys, json; sys.path.insert(0, %r); from flows import category_flow; "
            "r = category_flow('mvtec_ad', %r, 'fabric', json.loads(sys.argv[1]), %r); "
            "print('RESULT', r['classify']['digest'])" % (str(ROOT), str(tiny_dataset), str(tmp_path / "artifacts")))
    import json
    children = []
    for number in range(2):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home{number}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        children.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(TINY_CONFIG)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True))
    outputs = [child.communicate(timeout=400)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs[0][-2000:] + outputs[1][-2000:]
    digests = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("RESULT")}
    assert len(digests) == 1  # both runs ended on the very same classify artifact
    computed = sum(out.count("extract fabric: computing") for out in outputs)
    assert computed == 1  # the extraction was done once; the other run waited and reused it
    for path in (tmp_path / "artifacts").rglob("*.h5"):
        assert store.valid_digest(path) is not None, path
    assert not list((tmp_path / "artifacts").rglob(".*.tmp-*"))
