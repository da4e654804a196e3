"""Artifacts, a pool and its backbone moved to another machine's layout (other paths, the first site
gone): the run's artifacts keep their identity (a rerun there with the backbone at its new path
reuses them), score-new finds the pool's backbone by its content (or says in one line where it
looked and how to point at it), the guard, a review, pool add from another working directory and
musc report all work there, with the same scores; and nothing the line writes names the first
site's paths. Marked slow: the command line in child processes."""
import json
import os
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import DEMO_BACKBONE, as_flags, run_musc

pytestmark = pytest.mark.slow
SETTINGS = as_flags({"pretrained": "none", "image_size": 64, "layers": [0, 1, 2, 3], "device": "cpu",
                     "r_list": [1, 3]})


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def texts_naming(folder: Path, needles: list[str]) -> list[str]:
    """Files under ``folder`` whose bytes (text, HDF5 attributes and datasets) name any of ``needles``."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and any(n.encode() in path.read_bytes() for n in needles):
            found.append(str(path.relative_to(folder)))
    return found


def mtimes(folder: Path, stage: str) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob(f"{stage}/*.h5")}


def test_artifacts_a_pool_and_its_backbone_moved_elsewhere_keep_working(tiny_dataset, tmp_path):
    a = tmp_path / "site_a"
    (a / "models").mkdir(parents=True)
    shutil.copytree(tiny_dataset, a / "data")
    # a model file of the user's: the demo's model written anew (another file than the one musc ships)
    (a / "models" / "line_vit.json").write_text(json.dumps(json.loads(Path(DEMO_BACKBONE).read_text()), indent=3))
    parts = a / "parts"
    parts.mkdir()
    for name in ("hole/000.png", "stain/001.png"):
        shutil.copy(a / "data/fabric/test" / name, parts / name.replace("/", "_"))
    with Image.open(a / "data/fabric/test/good/000.png") as good:  # a good part the pool does not hold
        ImageOps.mirror(good).save(parts / "good_000.png")
    # site A: a run (paths typed relative), a pool of its good images, a day of new parts
    ok(run_musc("run", "--dataset", "mvtec_ad", "--root", "data", "--category", "fabric", "--artifacts",
                "artifacts", "--backbone", "models/line_vit.json", *SETTINGS, cwd=a))
    ok(run_musc("pool", "add", "artifacts/mvtec_ad/fabric", "--pool", "pools/fabric.h5", cwd=a))
    ok(run_musc("score-new", "--pool", "../pools/fabric.h5", *sorted(p.name for p in parts.iterdir()), "--out",
                "../day1", cwd=parts))
    before = pd.read_csv(a / "day1" / "scores.csv")

    # another machine: the same files under other paths, the model in a folder of its own; site A gone
    b = tmp_path / "elsewhere" / "site_b"
    b.parent.mkdir()
    shutil.copytree(a, b, symlinks=True)
    models = tmp_path / "elsewhere" / "model-store"
    shutil.move(str(b / "models"), models)
    shutil.rmtree(a)
    extracted = mtimes(b / "artifacts", "extract")
    assert extracted

    # the day's record and outputs name nothing of site A
    assert not texts_naming(b / "day1", [str(a), str(tmp_path)]), texts_naming(b / "day1", [str(a)])
    assert not texts_naming(b / "pools", [str(a), str(tmp_path)])

    # score-new of a new part: the pool's backbone is not where it was, nor beside the pool: one line
    fresh = b / "parts" / "new.png"
    shutil.copy(b / "data/fabric/test/scratch/000.png", fresh)
    refused = run_musc("score-new", "--pool", "pools/fabric.h5", "parts/new.png", "--out", "day2", cwd=b)
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()
    assert len(message) == 1 and "line_vit.json" in message[0] and "--backbone" in message[0], refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    # pointed at its folder (or found through $MUSC_MODELS), it scores the new part
    ok(run_musc("score-new", "--pool", "pools/fabric.h5", "parts/new.png", "--out", "day2", "--backbone",
                str(models), cwd=b))
    ok(run_musc("score-new", "--pool", "pools/fabric.h5", "parts/new.png", "--out", "day3", cwd=b,
                env={"MUSC_MODELS": str(models)}))
    assert pd.read_csv(b / "day2" / "scores.csv")["score"].tolist() == pd.read_csv(b / "day3" / "scores.csv")["score"].tolist()

    # the old day rebuilt there: the same scores, its parts and maps found from the day's folder
    ok(run_musc("report", "day1", cwd=b))
    after = pd.read_csv(b / "day1" / "scores.csv")
    pd.testing.assert_frame_equal(before, after)
    assert all((b / "day1" / m).is_file() for m in after["map_png"])
    assert all((b / "day1" / p).is_file() for p in after["path"])

    # the run again there, the backbone at its new path, with the guard: the extraction is reused
    ok(run_musc("run", "--dataset", "mvtec_ad", "--root", "data", "--category", "fabric", "--artifacts",
                "artifacts", "--backbone", str(models / "line_vit.json"), "--reference", "pools/fabric.h5",
                *SETTINGS, cwd=b))
    assert mtimes(b / "artifacts", "extract") == extracted
    assert list((b / "artifacts").rglob("guard/*.h5"))

    # a review, then pool add of the day from another working directory
    good = after.loc[after["path"].str.contains("good_000"), "part"].iloc[0]
    ok(run_musc("review", "day1", "--good", good[:12], cwd=b))
    elsewhere = b / "data"
    added = ok(run_musc("pool", "add", "../day1", "--pool", "../pools/fabric.h5", cwd=elsewhere))
    assert "added 1 image" in added, added
    ok(run_musc("report", "artifacts", cwd=b))

    # nothing written at site B names site A, the checkout (the backbone's old home) or the test's folder
    assert not texts_naming(b / "day1", [str(a), str(tmp_path)])
    assert not texts_naming(b / "day2", [str(tmp_path)]), texts_naming(b / "day2", [str(tmp_path)])
    assert not texts_naming(b / "pools", [str(a), str(tmp_path), str(Path(DEMO_BACKBONE).parents[2])])
    with h5py.File(next((b / "day2" / "artifacts").rglob("features/*.h5"))) as f:
        assert "line_vit.json" in f.attrs["config"] and str(models) not in f.attrs["config"]
    assert not os.path.exists(a)
