"""A pool filled from tiled runs (config ``tiles``): it holds each part's tiles, scores a new part's
tiles against its own (by position, or all of them) exactly as one tiled batch of the pool and the
part would, calibrates on the same sets, and gives stitched maps at the part's full resolution;
score-new, the daily flow, day additions and the guard take tiled pools like untiled ones."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CONFIG
from musc import store
from musc.inputs.config import MuscConfig
from musc.inputs.datasets import load_category
from musc.reference_pool import PoolError, PoolFile, add_run_to_pool, score_new_images
from musc.stages import Run, build_all

TILED = {**TINY_CONFIG, "tiles": [2, 2], "tile_overlap": 0.1}
POOL_PARTS = 5


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Folders of 128 px plates: ``line`` holds 5 good ones (the pool's run), ``batch`` the same 5
    and a plate with a pit (the batch the pool and that part would make); ``day`` the pitted
    plate and another good one, new."""
    from musc.inputs.synthetic import make_parts
    base = tmp_path_factory.mktemp("tiled_pool")
    made = make_parts(base / "made", n_good=POOL_PARTS + 1, n_defective=1, size=128, seed=8) / "plate" / "test"
    folders = {name: base / name for name in ("line", "batch", "day")}
    for folder in folders.values():
        folder.mkdir()
    for index in range(POOL_PARTS):
        for name in ("line", "batch"):
            shutil.copy(made / "good" / f"{index:03d}.png", folders[name] / f"good_{index}.png")
    shutil.copy(made / "spot" / "000.png", folders["batch"] / "pitted.png")
    shutil.copy(made / "spot" / "000.png", folders["day"] / "pitted.png")
    shutil.copy(made / "good" / f"{POOL_PARTS:03d}.png", folders["day"] / "new_good.png")
    return folders


def tiled_run(folder: Path, artifacts: Path, **changes):
    return build_all(Run(load_category("folder", folder, "plate"), MuscConfig(**{**TILED, **changes}), str(artifacts)))


@pytest.fixture(scope="module", params=["aligned", "all"])
def mixing(request, parts, tmp_path_factory):
    """Per tile mixing: the pool of the line's run, and the batch run of the pool's parts and the pitted one."""
    artifacts = tmp_path_factory.mktemp(f"artifacts_{request.param}")
    line = tiled_run(parts["line"], artifacts / "line", tile_mixing=request.param)
    batch = tiled_run(parts["batch"], artifacts / "batch", tile_mixing=request.param)
    pool = artifacts / "pool.h5"
    addition = add_run_to_pool(pool, line["evaluate"]["path"], include_flagged=True)
    return request.param, pool, addition, line, batch


def raw_scores(refs) -> dict[str, float]:
    names = [str(n) for n in store.open_artifact(refs["extract"]["path"]).read("names")]
    return dict(zip(names, store.open_artifact(refs["classify"]["path"]).read("image_scores_raw")))


def test_a_tiled_pool_holds_every_tile_and_records_the_tiling(mixing):
    name, pool_path, addition, _, _ = mixing
    pool = PoolFile(pool_path)
    assert addition.added == len(pool) == POOL_PARTS
    assert pool.settings.features["tiles"] == [2, 2] and pool.settings.features["tile_overlap"] == 0.1
    assert pool.settings.part_size == (128, 128) and pool.settings.score.tile_mixing == name
    assert pool.settings.tiles_per_image == 4
    assert store.open_artifact(pool_path).shape("features_r1")[1] == POOL_PARTS * 4  # a row per tile


def test_a_tiled_pool_calibrates_and_scores_as_the_tiled_batch_would(mixing, parts, tmp_path):
    """The pool's leave-one-out scores are the line run's own (raw, before RsCIN) image scores, and a
    new part scores as it does in the batch of the pool's parts and itself: with either mixing."""
    _, pool_path, _, line, batch = mixing
    pool = PoolFile(pool_path)
    line_scores = raw_scores(line)
    np.testing.assert_allclose(pool.self_scores, [line_scores[n.split("/", 1)[1]] for n in pool.names], rtol=1e-5)
    from musc.reference_pool.day import part_map
    result = score_new_images(pool_path, [str(parts["batch"] / "pitted.png")], tmp_path / "out", device="cpu")
    (row,) = result.rows
    assert Path(row["path"]).name == "pitted.png"
    assert row["score"] == pytest.approx(raw_scores(batch)["pitted.png"], rel=1e-5)
    assert part_map(result.record, row["part"]).shape == (128, 128)   # stitched at the part's full resolution
    assert Image.open(row["map_file"]).size[0] > 128             # the overlay of the full part


def test_a_tiled_pool_flags_a_pit_and_skips_a_part_of_another_size_naming_it(mixing, parts, tmp_path):
    _, pool_path, _, _, _ = mixing
    day = tmp_path / "2026-12-02"
    shutil.copytree(parts["day"], day)
    Image.open(day / "new_good.png").resize((96, 128)).save(day / "odd.png")
    with pytest.warns(UserWarning, match=r"odd\.png: 96 x 128 pixels, but the parts of the tiled pool pool\.h5 "
                                         r"have 128 x 128; not scored"):
        result = score_new_images(pool_path, sorted(str(p) for p in day.iterdir()), tmp_path / "out", device="cpu")
    scores = {Path(row["path"]).name: row for row in result.rows}
    assert set(scores) == {"pitted.png", "new_good.png"}
    assert scores["pitted.png"]["score"] > scores["new_good.png"]["score"]


def cli(*args):
    from typer.testing import CliRunner
    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def aligned(parts, tmp_path_factory):
    """A tiled (aligned) pool made by the command line from the line's run, and the batch run."""
    artifacts = tmp_path_factory.mktemp("aligned")
    line = tiled_run(parts["line"], artifacts / "line")
    batch = tiled_run(parts["batch"], artifacts / "batch")
    pool = artifacts / "line.h5"
    added = cli("pool", "add", "--pool", pool, "--include-flagged", line["evaluate"]["path"])
    assert added.exit_code == 0, added.output
    shown = cli("pool", "info", pool)
    assert shown.exit_code == 0, shown.output
    assert ("tiled: 2 x 2 tiles (overlap 0.1) of 128 x 128 px parts, tile mixing aligned; new parts of another "
            "size are skipped") in shown.stdout
    return pool, line, batch


def test_the_daily_flow_scores_a_day_against_a_tiled_pool(prefect_harness, aligned, parts, tmp_path):
    from flows.daily import daily_folder_flow
    pool, _, batch = aligned
    shutil.copytree(parts["day"], tmp_path / "line" / "2026-12-02")
    out = tmp_path / "results"
    summary = daily_folder_flow(str(pool), str(tmp_path / "line"), day="2026-12-02", out=str(out))
    assert summary["count"] == 2
    import pandas as pd
    table = {Path(p).name: s for p, s in pd.read_csv(out / "scores.csv")[["path", "score"]].itertuples(index=False)}
    assert float(table["pitted.png"]) == pytest.approx(raw_scores(batch)["pitted.png"], rel=1e-5)
    assert float(table["pitted.png"]) > float(table["new_good.png"])
    from musc.reference_pool.day import load_day, part_map
    record = load_day(out)
    assert len(record.parts) == 2 and all(part_map(record, part).shape == (128, 128) for part in record.parts)


def test_parts_confirmed_good_join_a_tiled_pool_with_all_their_tiles(aligned, parts, tmp_path):
    from musc.reference_pool import add_day_to_pool, record_verdicts
    pool, _, _ = aligned
    grown = tmp_path / "grown.h5"
    shutil.copy(pool, grown)
    shutil.copy(store.manifest_path(pool), store.manifest_path(grown))
    day = tmp_path / "2026-12-02"
    shutil.copytree(parts["day"], day)
    score_new_images(grown, sorted(str(p) for p in day.iterdir()), tmp_path / "out", device="cpu")
    record_verdicts(tmp_path / "out", good=[str(day / "new_good.png")], defect=[str(day / "pitted.png")])
    addition = add_day_to_pool(grown, tmp_path / "out", device="cpu")
    assert addition.added == 1 and addition.size == POOL_PARTS + 1
    assert addition.left_out == [(str(day / "pitted.png"), "verdict defect")]
    after = PoolFile(grown)
    assert store.open_artifact(grown).shape("features_r3")[1] == (POOL_PARTS + 1) * 4
    assert len(after.self_scores) == POOL_PARTS + 1
    # the new part's tiles, as it was scored, are the rows a run of it would have made
    batch = shutil.copytree(parts["line"], tmp_path / "with_new")
    shutil.copy(day / "new_good.png", batch / "new_good.png")
    rerun = tiled_run(batch, tmp_path / "day_artifacts")
    names = [str(n) for n in store.open_artifact(rerun["extract"]["path"]).read("names")]
    rows = slice(names.index("new_good.png") * 4, names.index("new_good.png") * 4 + 4)
    aggregate = store.open_artifact(rerun["aggregate"][1]["path"]).read("features")
    np.testing.assert_allclose(after.reader(3, 2)(POOL_PARTS * 4, (POOL_PARTS + 1) * 4).numpy(), aggregate[2, rows],
                               rtol=1e-5, atol=1e-6)


def test_the_guard_scores_a_tiled_run_against_a_tiled_pool(aligned, parts, tmp_path):
    from musc.reference_pool.guard import read_guard
    pool, _, _ = aligned
    guarded = build_all(Run(load_category("folder", parts["batch"], "plate"), MuscConfig(**{**TILED, "reference": str(pool)}),
                            str(tmp_path / "guarded")))
    guard = read_guard(guarded["guard"], guarded["evaluate"])
    scores = dict(zip(guard.names, guard.pool_scores))
    alone = score_new_images(pool, [str(parts["batch"] / "pitted.png")], tmp_path / "out", device="cpu")
    assert scores["pitted.png"] == alone.rows[0]["score"]  # the same arithmetic, part by part


def test_a_tiled_pool_refuses_runs_made_otherwise_naming_the_setting(aligned, parts, tmp_path):
    pool, _, _ = aligned
    untiled = build_all(Run(load_category("folder", parts["batch"], "plate"), MuscConfig(**TINY_CONFIG),
                            str(tmp_path / "untiled")))
    with pytest.raises(PoolError, match=r"other settings than the pool's: .*features\.tiles: None \(the pool: \[2, 2\]\)"):
        add_run_to_pool(pool, untiled["evaluate"]["path"], include_flagged=True)
    small = tmp_path / "small"
    small.mkdir()
    for image in sorted(parts["batch"].iterdir()):
        Image.open(image).resize((96, 96)).save(small / image.name)
    other_size = tiled_run(small, tmp_path / "small_artifacts")
    with pytest.raises(PoolError, match=r"part_size: 96 x 96 pixels \(the pool: 128 x 128 pixels\)"):
        add_run_to_pool(pool, other_size["evaluate"]["path"], include_flagged=True)
    refused = cli("pool", "add", "--pool", pool, "--include-flagged", other_size["evaluate"]["path"])
    assert refused.exit_code == 2 and "part_size" in refused.stderr and "Traceback" not in refused.output
    assert len(PoolFile(pool)) == POOL_PARTS


@pytest.mark.slow  # the command in a child process
def test_score_new_names_each_part_it_skips_in_one_terminal_line(aligned, parts, tmp_path):
    from conftest import run_musc
    pool, _, _ = aligned
    day = shutil.copytree(parts["day"], tmp_path / "day")
    Image.open(day / "new_good.png").resize((100, 128)).save(day / "odd.png")
    (day / "broken.png").write_bytes(b"not a picture")
    done = run_musc("score-new", "--pool", str(pool), "--out", str(tmp_path / "out"),
                    *sorted(str(p) for p in day.iterdir()), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.strip()]
    assert warned == [f"warning: {day / 'broken.png'}: unreadable image (cannot identify image file "
                      f"'{day / 'broken.png'}')",
                      f"warning: {day / 'odd.png'}: 100 x 128 pixels, but the parts of the tiled pool line.h5 have "
                      "128 x 128; not scored (a tiled pool cuts parts of its runs' size only)"], done.stderr
    assert sorted(Path(line.split(":")[0]).name for line in done.stdout.splitlines() if "score" in line
                  and "map" in line) == ["new_good.png", "pitted.png"]


def test_large_tiled_maps_are_kept_whole_and_drawn_at_the_batchs_bounded_resolution(aligned, parts, tmp_path,
                                                                                      monkeypatch):
    from musc.outputs import evaluation, figures
    from musc.reference_pool.day import part_map
    pool, _, _ = aligned
    drawn = []
    real = figures.save_overlay
    monkeypatch.setattr(figures, "save_overlay", lambda picture, anomaly_map, *a, **k: (
        drawn.append((picture.shape, anomaly_map.shape)), real(picture, anomaly_map, *a, **k))[1])
    monkeypatch.setattr(evaluation, "EVALUATION_MAX_PIXELS", 64 * 64)  # as a 2048 px part at the real bound
    result = score_new_images(pool, [str(parts["day"] / "pitted.png")], tmp_path / "out", device="cpu")
    assert drawn == [((64, 64, 3), (64, 64))]                                  # the overlay: reduced by 2
    assert part_map(result.record, result.rows[0]["part"]).shape == (128, 128)  # the map: whole


def test_a_parts_score_does_not_depend_on_how_the_parts_are_chunked(mixing, parts, tmp_path, monkeypatch):
    from musc.reference_pool import pool as pool_module
    _, pool_path, _, _, _ = mixing
    images = sorted(str(p) for p in parts["day"].iterdir())
    whole = score_new_images(pool_path, images, tmp_path / "whole", device="cpu")
    monkeypatch.setattr(pool_module, "ROWS_PER_CHUNK", 1)   # one part (its 4 tiles) per chunk
    monkeypatch.setattr(pool_module, "VOTES_AT_ONCE", 1)    # one tile's votes at a time
    assert PoolFile(pool_path).settings.chunks(2) == [(0, 1), (1, 2)]
    chunked = score_new_images(pool_path, images, tmp_path / "chunked", device="cpu")
    assert [r["path"] for r in chunked.rows] == [r["path"] for r in whole.rows]
    assert [r["score"] for r in chunked.rows] == [r["score"] for r in whole.rows]  # bit for bit


def test_what_a_run_will_record_is_known_before_it_runs(aligned, parts, tmp_path):
    from musc.reference_pool.lineage import run_lineage
    from musc.reference_pool.runs import planned_settings
    pool, line, batch = aligned
    for refs, folder in ((line, parts["line"]), (batch, parts["batch"])):
        recorded = run_lineage(refs["evaluate"]["path"])[0]
        planned = planned_settings(Run(load_category("folder", folder, "plate"), MuscConfig(**TILED), str(tmp_path)))
        assert planned.differences(recorded) == [] and planned.part_size == recorded.part_size == (128, 128)
    untiled = planned_settings(Run(load_category("folder", parts["line"], "plate"), MuscConfig(**TINY_CONFIG),
                                   str(tmp_path)))
    assert untiled.part_size is None and "tiles" not in untiled.features


@pytest.mark.slow  # the command in child processes
def test_a_run_whose_settings_the_pool_cannot_guard_is_refused_before_any_work(aligned, parts, tmp_path):
    from conftest import run_musc
    pool, _, _ = aligned
    flags = ["--backbone", TILED["backbone"], "--pretrained", "none", "--image-size", "64", "--layers", "0,1,2,3",
             "--r-list", "1,3", "--device", "cpu"]
    for changed, named in ((["--tiles", "2x3"], "features.tiles: [2, 3] (the pool: [2, 2])"),
                           (["--tiles", "2x2", "--tile-overlap", "0.1", "--tile-mixing", "all"],
                            "tile_mixing: 'all' (the pool: 'aligned')")):
        done = run_musc("run", "--dataset", "folder", "--root", parts["batch"], "--category", "plate", *flags, *changed,
                        "--artifacts", tmp_path / "artifacts", "--reference", pool, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        (line,) = [text for text in done.stderr.splitlines() if text.strip()]
        assert line.startswith(f"error: {pool}: this run was made with other settings than the pool's") and named in line
        assert not list((tmp_path / "artifacts").rglob("*.h5"))             # nothing was computed
