"""The systematic-defect guard of a batch run (``musc run --reference POOL``): a defect shared by a
large share of one batch hides from mutual scoring; scored against a clean pool alone, those
images are flagged, marked in per_image.csv and the reports, and named in a warning. And the pool
records where each of its images came from."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_category
from musc.inputs.synthetic import make_dataset
from musc.outputs.guarding import GUARD_MARK
from musc.reference_pool import PoolFile, add_day_to_pool, add_run_to_pool, record_verdicts, score_new_images
from musc.store import open_artifact

STAINED = 6
PARTS = 16


@pytest.fixture(scope="module")
def clean_pool(prefect_harness, tmp_path_factory):
    """A pool of the good images of a scored run of 12 good and 3 defective fabric images."""
    folder = tmp_path_factory.mktemp("guard_pool")
    data = make_dataset(folder / "data", n_good=12, n_per_defect=1, size=64, seed=5, categories=("fabric",))
    result = run_category(data, folder / "artifacts")
    pool = folder / "pool.h5"
    add_run_to_pool(pool, folder / "artifacts/mvtec_ad/fabric")
    return pool, result


def batch(folder: Path, stained_count: int, seed: int) -> tuple[Path, list[str]]:
    """A batch of 16 fabric parts (MVTec layout, all filed as good); ``stained_count`` of them carry
    the same stain at the same place (a systematic fault). Returns the root and the stained names."""
    made = make_dataset(folder / "made", n_good=PARTS, n_per_defect=0, size=64, seed=seed, categories=("fabric",))
    yy, xx = np.mgrid[0:64, 0:64]
    stain = ((yy - 36) / 7.0) ** 2 + ((xx - 26) / 5.0) ** 2 <= 1.0
    colour = np.array([150.0, 60.0, 30.0])
    target = folder / "batch" / "fabric" / "test" / "good"
    target.mkdir(parents=True)
    stained = []
    for index in range(PARTS):
        image = np.asarray(Image.open(made / f"fabric/test/good/{index:03d}.png").convert("RGB"), np.float64)
        if index % 3 == 0 and len(stained) < stained_count:
            image[stain] = 0.25 * image[stain] + 0.75 * colour
            stained.append(f"good/{index:03d}.png")
        Image.fromarray(image.astype(np.uint8)).save(target / f"{index:03d}.png")
    return folder / "batch", stained


@pytest.fixture(scope="module")
def stained_run(clean_pool, tmp_path_factory):
    pool, _ = clean_pool
    folder = tmp_path_factory.mktemp("stained")
    root, stained = batch(folder, STAINED, seed=11)
    result = run_category(root, folder / "artifacts", reference=str(pool))
    return result, stained, folder


@pytest.mark.slow  # runs category flows
def test_a_systematic_defect_is_marked_and_named(stained_run):
    result, stained, _ = stained_run
    outputs = Path(result["outputs"])
    per_image = pd.read_csv(outputs / "per_image.csv", keep_default_na=False)
    assert {"pool_score", "pool_decision", "guard"} <= set(per_image.columns)
    by_name = per_image.set_index("name")
    # the blind spot: the batch calls the stained parts normal; the pool alone flags them
    assert (by_name.loc[stained, "decision"] == "normal").all()
    assert (by_name.loc[stained, "pool_decision"] == "anomalous").all()
    marked = set(per_image.loc[per_image["guard"] == GUARD_MARK, "name"])
    assert marked == set(stained)
    assert sorted(result["guard_marked"]) == sorted(stained)
    clean = per_image[~per_image["name"].isin(stained)]
    assert (clean["pool_score"] < by_name.loc[stained, "pool_score"].min()).all()
    report = (outputs / "report.md").read_text()
    warning = next(line for line in report.splitlines() if "WARNING" in line)
    assert all(name in warning for name in stained) and "batch" in warning
    assert report.count(f"**{GUARD_MARK}**") == STAINED
    page = (outputs / "report.html").read_text()
    assert page.count(f"<span class='tag guard'>{GUARD_MARK}</span>") == STAINED
    from musc.outputs.ui_content import category_content
    markdown = category_content(outputs, "mvtec_ad / fabric", {}).markdown
    assert "Systematic-defect guard (6 marked)" in markdown and all(name in markdown for name in stained)


@pytest.mark.slow  # runs category flows
def test_the_guard_is_an_artifact_reused_and_the_batch_keys_unchanged(stained_run, clean_pool):
    result, stained, folder = stained_run
    pool, _ = clean_pool
    guard = open_artifact(result["guard"]["path"], "guard")
    assert guard.inputs == {"evaluate": result["evaluate"]["digest"], "pool": PoolFile(pool).digest}
    before = {p: p.stat().st_mtime_ns for p in (folder / "artifacts").rglob("*.h5")}
    plain = run_category(folder / "batch", folder / "artifacts")  # the same batch without the guard
    assert {k: plain[k]["path"] for k in ("extract", "classify", "evaluate")} == \
           {k: result[k]["path"] for k in ("extract", "classify", "evaluate")}
    outputs = Path(plain["outputs"])  # the same report folder: it tells this run, without the guard
    assert not {"pool_score", "pool_decision", "guard"} & set(pd.read_csv(outputs / "per_image.csv").columns)
    assert GUARD_MARK not in (outputs / "report.md").read_text() and "reference pool" not in (
        outputs / "report.md").read_text()
    assert GUARD_MARK not in (outputs / "report.html").read_text()
    again = run_category(folder / "batch", folder / "artifacts", reference=str(pool))
    assert again["guard"] == result["guard"]
    assert (pd.read_csv(outputs / "per_image.csv", keep_default_na=False)["guard"] == GUARD_MARK).sum() == STAINED
    assert {p: p.stat().st_mtime_ns for p in (folder / "artifacts").rglob("*.h5")} == before


@pytest.mark.slow  # runs category flows
def test_a_batch_without_defects_gets_no_mark(clean_pool, tmp_path):
    pool, _ = clean_pool
    root, _ = batch(tmp_path, 0, seed=12)
    result = run_category(root, tmp_path / "artifacts", reference=str(pool))
    per_image = pd.read_csv(Path(result["outputs"]) / "per_image.csv", keep_default_na=False)
    assert "guard" in per_image.columns and (per_image["guard"] == "").all()
    assert result["guard_marked"] == []
    assert "WARNING" not in (Path(result["outputs"]) / "report.md").read_text()


@pytest.mark.slow  # runs category flows
def test_a_pool_of_other_settings_is_refused_naming_the_difference(clean_pool, stained_run):
    from musc.reference_pool import DecisionRule, PoolError, open_pool
    from musc.stages import ensure, guard
    result, _, folder = stained_run
    other = run_category(folder / "batch", folder / "other_artifacts", r_list=[1])
    with pytest.raises(PoolError, match=r"r_list: \(1,\) \(the pool: \(1, 3\)\)"):  # the stage itself refuses
        ensure(guard.plan(other["evaluate"], open_pool(clean_pool[0]), DecisionRule()))
    with pytest.raises(PoolError, match=r"r_list: \(1,\) \(the pool: \(1, 3\)\)"):  # and the flow, before any work
        run_category(folder / "batch", folder / "other_artifacts", r_list=[1], reference=str(clean_pool[0]))


def test_run_refuses_a_missing_reference_before_any_work(tmp_path):
    from typer.testing import CliRunner
    from flows.cli import app
    outcome = CliRunner().invoke(app, ["run", "--dataset", "mvtec_ad", "--root", str(tmp_path), "--category", "x",
                                       "--artifacts", str(tmp_path / "a"), "--reference", str(tmp_path / "no.h5")])
    assert outcome.exit_code != 0
    assert "--reference: no such pool file" in outcome.output
    assert not (tmp_path / "a").exists()


# Provenance ---------------------------------------------------------------------------------------

@pytest.mark.slow  # runs category flows
def test_the_pool_records_where_each_image_came_from(clean_pool, tmp_path):
    from typer.testing import CliRunner
    from flows.cli import app
    pool_path, result = clean_pool
    copy = tmp_path / "pool.h5"
    add_run_to_pool(copy, Path(result["outputs"]).parents[1])
    pool = PoolFile(copy)
    run_source = f"run {result['evaluate']['digest'][:12]}"
    assert pool.sources == [run_source] * len(pool)
    # a day's part confirmed good joins with its day and verdict; one decided normal with --include-normal
    day = tmp_path / "2026-12-02"
    day.mkdir()
    parts = []
    made = make_dataset(tmp_path / "made", n_good=2, n_per_defect=0, size=64, seed=21, categories=("fabric",))
    for index in range(2):
        target = day / f"part_{index}.png"
        Image.open(made / f"fabric/test/good/{index:03d}.png").save(target)
        parts.append(str(target))
    scored = score_new_images(copy, parts, tmp_path / "out", device="cpu")
    assert [row["decision"] for row in scored.rows] == ["normal", "normal"]
    record_verdicts(tmp_path / "out", good=[parts[0]])
    add_day_to_pool(copy, tmp_path / "out", device="cpu", include_normal=True)
    pool = PoolFile(copy)
    day_name = json.loads((tmp_path / "out" / "day.json").read_text())["day"]
    assert pool.sources[-2:] == [f"day {day_name} (verdict good)", f"day {day_name} (decided normal)"]
    shown = CliRunner().invoke(app, ["pool", "info", str(copy)]).output
    assert f"{run_source}: {len(pool) - 2}" in shown
    assert f"day {day_name} (verdict good): 1" in shown and f"day {day_name} (decided normal): 1" in shown
