"""Variants of tiled reference pools beyond tests/test_tiled_pool.py: scores equal to the batch's for
non-square parts, other grids, overlaps, mixings and block sizes; eviction keeps a part's tiles
together; parts of another size named as such (joining a pool, or all of a call); day additions a
chunk of parts at a time; the daily flow names what it skips in its run's log and report; a
``--reference`` pool that cannot guard the run refused before any work."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_BACKBONE, TINY_CONFIG, run_musc
from musc import store
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import load_category
from musc.inputs.images import UnreadableImage
from musc.reference_pool import PoolError, PoolFile, add_run_to_pool, score_new_images
from musc.stages import Run, build_all


def make(folder: Path, seed: int, n_good: int, size=(128, 128), pitted: bool = False) -> Path:
    """``n_good`` plates (and a pitted one) of ``size`` (width, height) in ``folder``."""
    from musc.inputs.synthetic import make_parts
    made = make_parts(folder.parent / f"made_{folder.name}", n_good=n_good, n_defective=1, size=128,
                      seed=seed) / "plate" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    sources = [made / "good" / f"{i:03d}.png" for i in range(n_good)] + ([made / "spot" / "000.png"] if pitted else [])
    for index, source in enumerate(sources):
        image = Image.open(source)
        (image if image.size == size else image.resize(size)).save(
            folder / ("pitted.png" if pitted and index == n_good else f"good_{seed}_{index}.png"))
    return folder


def tiled_run(folder: Path, artifacts: Path, **settings):
    return build_all(Run(load_category("folder", folder, "plate"), MuscConfig(**{**TINY_CONFIG, **settings}),
                         str(artifacts)))


def raw_scores(refs) -> dict[str, float]:
    names = [str(n) for n in store.open_artifact(refs["extract"]["path"]).read("names")]
    return dict(zip(names, store.open_artifact(refs["classify"]["path"]).read("image_scores_raw")))


# What works --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, settings", [
    ((160, 96), {"tiles": [3, 2], "tile_overlap": 0.25, "tile_mixing": "all", "block_size": 2}),
    ((96, 160), {"tiles": [1, 3], "tile_overlap": 0.4, "tile_mixing": "aligned", "block_size": 1}),
])
def test_non_square_parts_and_odd_pools_score_as_the_tiled_batch(tmp_path, size, settings):
    """A pool of 3 non-square parts: its calibration is the raw scores of its own run, a new part's
    score that of the batch of the pool and the part, and the map is the part's full size."""
    line = make(tmp_path / "line", 8, 3, size)
    batch = make(tmp_path / "batch", 8, 3, size, pitted=True)
    line_run, batch_run = tiled_run(line, tmp_path / "a_line", **settings), tiled_run(batch, tmp_path / "a_batch", **settings)
    pool = tmp_path / "pool.h5"
    add_run_to_pool(pool, line_run["evaluate"]["path"], include_flagged=True)
    opened, own = PoolFile(pool), raw_scores(line_run)
    np.testing.assert_allclose(opened.self_scores, [own[n.split("/", 1)[1]] for n in opened.names], rtol=1e-5)
    result = score_new_images(pool, [str(batch / "pitted.png")], tmp_path / "out", device="cpu")
    from musc.reference_pool.day import part_map
    assert result.rows[0]["score"] == pytest.approx(raw_scores(batch_run)["pitted.png"], rel=1e-5)
    assert part_map(result.record, result.rows[0]["part"]).shape == (size[1], size[0])


def test_eviction_keeps_each_parts_tiles_together_and_recalibrates(tmp_path):
    settings = {"tiles": [2, 2], "tile_overlap": 0.2, "tile_mixing": "all"}
    first, second = make(tmp_path / "first", 8, 3), make(tmp_path / "second", 9, 3)
    kept = tmp_path / "kept"
    kept.mkdir()
    for image in sorted(first.iterdir())[1:] + sorted(second.iterdir()):
        shutil.copy(image, kept / image.name)
    runs = [tiled_run(folder, tmp_path / f"a_{folder.name}", **settings) for folder in (first, second, kept)]
    pool = tmp_path / "pool.h5"
    add_run_to_pool(pool, runs[0]["evaluate"]["path"], include_flagged=True)
    add_run_to_pool(pool, runs[1]["evaluate"]["path"], include_flagged=True, max_images=5)
    opened = PoolFile(pool)
    assert store.open_artifact(pool).shape("features_r1")[1] == 5 * 4
    expected = raw_scores(runs[2])
    np.testing.assert_allclose(opened.self_scores, [expected[n.split("/", 1)[1]] for n in opened.names], rtol=1e-5)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """An untiled and a tiled (2 x 2, aligned) pool of three 128 px plates, and the plates' folder."""
    base = tmp_path_factory.mktemp("red23")
    line = make(base / "line", 8, 3)
    made = {}
    for name, settings in (("untiled", {}), ("tiled", {"tiles": [2, 2]})):
        refs = tiled_run(line, base / f"a_{name}", **settings)
        made[name] = base / f"{name}.h5"
        add_run_to_pool(made[name], refs["evaluate"]["path"], include_flagged=True)
    return made, base


def test_a_day_scored_against_another_pool_cannot_join_a_tiled_pool(pools, tmp_path):
    """A part scored (and confirmed good) against another pool (untiled, of another size than the
    tiled pool's parts): the refusal names the pools (their identities), not an unreadable file."""
    from musc.reference_pool import add_day_to_pool, record_verdicts
    from musc.reference_pool.review import ReviewError
    made, _ = pools
    day = make(tmp_path / "day", 11, 1, (96, 96))
    (part,) = sorted(str(p) for p in day.iterdir())
    score_new_images(made["untiled"], [part], tmp_path / "out", device="cpu")
    record_verdicts(tmp_path / "out", good=[part])
    before = Path(made["tiled"]).read_bytes()
    with pytest.raises((ReviewError, PoolError)) as refused:
        add_day_to_pool(made["tiled"], tmp_path / "out", device="cpu")
    assert "not the pool" in str(refused.value) and "unreadable" not in str(refused.value), str(refused.value)
    assert Path(made["tiled"]).read_bytes() == before


def test_score_new_of_parts_all_of_another_size_says_so(pools, tmp_path):
    """Every part of another size than the tiled pool's: the error should name the size, not say that
    none of the images could be read."""
    made, _ = pools
    day = make(tmp_path / "day", 12, 2, (96, 96))
    with pytest.warns(UserWarning), pytest.raises((UnreadableImage, PoolError)) as refused:
        score_new_images(made["tiled"], sorted(str(p) for p in day.iterdir()), tmp_path / "out", device="cpu")
    assert "could be read" not in str(refused.value) and "size" in str(refused.value), str(refused.value)


def test_a_day_addition_reads_each_parts_tiles_as_they_were_scored(pools, tmp_path, monkeypatch):
    """A day's confirmed-good parts join a tiled pool with all their tiles, read from the day's
    features artifacts: no backbone forward, nothing extracted again."""
    from musc.inputs.backbones import Backbone
    from musc.reference_pool import DecisionRule, add_day_to_pool, record_verdicts
    made, _ = pools
    pool = tmp_path / "pool.h5"
    shutil.copy(made["tiled"], pool)
    shutil.copy(store.manifest_path(made["tiled"]), store.manifest_path(pool))
    day = make(tmp_path / "day", 13, 9)
    parts = sorted(str(p) for p in day.iterdir())
    score_new_images(pool, parts, tmp_path / "out", device="cpu", rule=DecisionRule(threshold=1e9))
    record_verdicts(tmp_path / "out", good=parts)
    monkeypatch.setattr(Backbone, "extract", lambda *a: pytest.fail("a part went through the backbone again"))
    assert add_day_to_pool(pool, tmp_path / "out", device="cpu").added == 9
    after = PoolFile(pool)
    assert len(after) == 3 + 9 and store.open_artifact(pool).shape("features_r1")[1] == 12 * 4


@pytest.mark.slow
def test_the_daily_flow_logs_a_part_it_skips_in_the_runs_log(prefect_harness, pools, tmp_path):
    """A part of another size in a day: score-new names it on the terminal, but a deployment's run
    shows only its Prefect log (and report, artifacts): the skipped part should be named there."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.daily import daily_folder_flow
    made, base = pools
    day = tmp_path / "line" / "2026-12-02"
    day.mkdir(parents=True)
    shutil.copy(sorted((base / "line").iterdir())[0], day / "part.png")
    Image.open(day / "part.png").resize((96, 128)).save(day / "odd.png")
    state = daily_folder_flow(str(made["tiled"]), str(tmp_path / "line"), day="2026-12-02", out=str(tmp_path / "res"),
                              review_wait_s=0, return_state=True)
    assert state.is_completed()
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert any("anomalous of" in log.message for log in logs), [log.message for log in logs]  # the run's log is read
    named = [log.message for log in logs if "odd.png" in log.message]
    report = (tmp_path / "res" / "report.md").read_text()
    assert named and "odd.png" in report and "## Not scored" in report, [log.message for log in logs]


@pytest.mark.slow
def test_run_reference_refuses_an_incompatible_pool_before_any_work(pools, tmp_path):
    """``musc run --tiles 2x2 --reference untiled.h5``: the pool can never guard this run (tiles
    differ); that is known from the settings alone, so it should be refused before extraction, not
    after the whole batch has been computed."""
    made, base = pools
    artifacts = tmp_path / "artifacts"
    done = run_musc("run", "--dataset", "folder", "--root", base / "line", "--category", "plate",
                    "--artifacts", artifacts, "--backbone", DEMO_BACKBONE, "--pretrained", "none",
                    "--image-size", "64", "--layers", "0,1,2,3", "--r-list", "1,3", "--device", "cpu",
                    "--tiles", "2x2", "--reference", made["untiled"], cwd=tmp_path)
    assert done.returncode == 2 and "features.tiles" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert not list(artifacts.rglob("extract/*.h5")), "the batch was computed before the pool was refused"
