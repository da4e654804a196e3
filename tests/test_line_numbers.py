"""The line's numbers are the same since it became stages of the graph: score-new's scores, maps and
decisions (untiled, with the calibrated and a fixed rule; tiled, both mixings), a grown pool's
calibration after a day's parts joined it, and the guard's scores and decisions, against what the
code before that change gave on the same generated data (tests/fixtures/line_numbers.h5; how it was
made: tests/fixtures/make_line_numbers.py). The scores compare exactly: they are made by the same
arithmetic in the same order."""
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, TINY_CONFIG

NUMBERS = ROOT / "tests" / "fixtures" / "line_numbers.h5"


def expected(group):
    with h5py.File(NUMBERS) as f:
        g = f[group]
        return {name: (g[name][()] if g[name].dtype.kind != "O" else [v.decode() for v in g[name][()]])
                for name in g if isinstance(g[name], h5py.Dataset)}, dict(g.attrs)


@pytest.fixture(scope="module")
def line_data(tmp_path_factory):
    """The data make_line_numbers.py used: a pool from a scored run of 12 good and 3 defective
    fabric images, and a day of 4 good and 3 defective new parts."""
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_dataset
    from musc.reference_pool import add_run_to_pool
    from musc.stages import Run, build_all
    base = tmp_path_factory.mktemp("line_numbers")
    data = make_dataset(base / "data", n_good=12, n_per_defect=1, size=64, seed=5, categories=("fabric",))
    build_all(Run(load_category("mvtec_ad", data, "fabric"), MuscConfig(**TINY_CONFIG), str(base / "artifacts")))
    pool = base / "pool.h5"
    add_run_to_pool(pool, base / "artifacts/mvtec_ad/fabric")
    day = make_dataset(base / "day", n_good=4, n_per_defect=1, size=64, seed=9, categories=("fabric",))
    return base, pool, day / "fabric/test", sorted((day / "fabric/test").glob("*/*.png"))


@pytest.mark.parametrize("name, threshold", [("calibrated", None), ("fixed", 0.5)])
def test_score_new_gives_the_same_numbers(line_data, name, threshold):
    from musc.reference_pool import DecisionRule, score_new_images
    from musc.reference_pool.day import part_map
    base, pool, folder, parts = line_data
    day = score_new_images(pool, parts, base / f"out_{name}", DecisionRule(threshold), device="cpu")
    want, attrs = expected(f"untiled/{name}")
    rows = {str(Path(row["path"]).relative_to(folder)): row for row in day.rows}
    assert sorted(rows) == sorted(want["names"])
    assert day.threshold == attrs["threshold"]
    for index, part in enumerate(want["names"]):
        assert rows[part]["score"] == want["scores"][index], part
        assert rows[part]["decision"] == want["decisions"][index], part
        np.testing.assert_array_equal(part_map(day.record, rows[part]["part"]), want["maps"][index], err_msg=part)


def test_a_pool_grown_by_a_days_good_parts_calibrates_the_same(line_data):
    from musc.reference_pool import PoolFile, add_day_to_pool, record_verdicts
    base, pool, folder, parts = line_data
    want, _ = expected("untiled")
    np.testing.assert_array_equal(PoolFile(pool).self_scores, want["pool_self_scores"])
    out = base / "out_calibrated"
    if not out.is_dir():
        from musc.reference_pool import score_new_images
        score_new_images(pool, parts, out, device="cpu")
    record_verdicts(out, good=[str(p) for p in parts if p.parent.name == "good"])
    grown = base / "grown.h5"
    shutil.copy(pool, grown), shutil.copy(pool.with_suffix(".json"), grown.with_suffix(".json"))
    add_day_to_pool(grown, out)
    np.testing.assert_array_equal(PoolFile(grown).self_scores, want["grown_self_scores"])


@pytest.mark.parametrize("mixing", ["aligned", "all"])
def test_a_tiled_pool_gives_the_same_numbers(tmp_path, mixing):
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_parts
    from musc.reference_pool import add_run_to_pool, score_new_images
    from musc.reference_pool.day import part_map
    from musc.stages import Run, build_all
    made = make_parts(tmp_path / "made", n_good=6, n_defective=1, size=128, seed=8) / "plate" / "test"
    line, new = tmp_path / "line", tmp_path / "new"
    line.mkdir(), new.mkdir()
    for index in range(5):
        shutil.copy(made / "good" / f"{index:03d}.png", line / f"good_{index}.png")
    shutil.copy(made / "spot" / "000.png", new / "pitted.png")
    shutil.copy(made / "good" / "005.png", new / "new_good.png")
    config = MuscConfig(**{**TINY_CONFIG, "tiles": [2, 2], "tile_overlap": 0.1, "tile_mixing": mixing})
    refs = build_all(Run(load_category("folder", line, "plate"), config, str(tmp_path / "artifacts")))
    pool = tmp_path / "tiled.h5"
    add_run_to_pool(pool, refs["evaluate"]["path"], include_flagged=True)
    day = score_new_images(pool, sorted(new.glob("*.png")), tmp_path / "out", device="cpu")
    want, attrs = expected(f"tiled/{mixing}")
    rows = {Path(row["path"]).name: row for row in day.rows}
    assert day.threshold == attrs["threshold"]
    for index, part in enumerate(want["names"]):
        assert (rows[part]["score"], rows[part]["decision"]) == (want["scores"][index], want["decisions"][index])
        np.testing.assert_array_equal(part_map(day.record, rows[part]["part"]), want["maps"][index])


@pytest.mark.slow  # two batch runs
def test_the_guard_gives_the_same_numbers(line_data, tmp_path):
    from PIL import Image

    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_dataset
    from musc.reference_pool.guard import read_guard
    from musc.stages import Run, build_all
    _, pool, _, _ = line_data
    made = make_dataset(tmp_path / "made", n_good=16, n_per_defect=0, size=64, seed=11, categories=("fabric",))
    yy, xx = np.mgrid[0:64, 0:64]
    stain = ((yy - 36) / 7.0) ** 2 + ((xx - 26) / 5.0) ** 2 <= 1.0
    target = tmp_path / "batch/fabric/test/good"
    target.mkdir(parents=True)
    for index in range(16):
        image = np.asarray(Image.open(made / f"fabric/test/good/{index:03d}.png").convert("RGB"), np.float64)
        if index % 3 == 0:
            image[stain] = 0.25 * image[stain] + 0.75 * np.array([150.0, 60.0, 30.0])
        Image.fromarray(image.astype(np.uint8)).save(target / f"{index:03d}.png")
    config = MuscConfig(**{**TINY_CONFIG, "reference": str(pool)})
    refs = build_all(Run(load_category("mvtec_ad", tmp_path / "batch", "fabric"), config, str(tmp_path / "artifacts")))
    guard = read_guard(refs["guard"], refs["evaluate"])
    want, attrs = expected("guard")
    assert guard.names == want["names"] and guard.threshold == attrs["threshold"]
    np.testing.assert_array_equal(guard.pool_scores, want["pool_scores"])
    assert guard.pool_decisions == want["pool_decisions"]
