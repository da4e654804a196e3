"""Per-part verdicts against a reference pool: a new part is scored against the pool only, so its
score, map and decision do not depend on the other parts of the call, and a defect repeated on many
parts of one day is caught (it cannot hide behind its siblings). And a pool of good parts only."""
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import musc
from conftest import DEMO_BACKBONE
from musc.inputs.images import load_image
from musc.store import manifest_path
from musc.inputs.synthetic import make_dataset
from musc.method.msm import mutual_scores
from musc.reference_pool import PoolFile, add_run_to_pool, part_scores, score_new_images
from musc.reference_pool.scoring import in_memory
from musc.inputs.config import ScoreSettings

STAINED = 6
PARTS = 16


@pytest.fixture(scope="module")
def clean_pool(tmp_path_factory):
    """A pool made from a scored run of 12 good and 3 defective images (its stages built in plain
    Python): the defective ones (labelled 1) stay out, and so does any image the run decided anomalous."""
    from conftest import TINY_CONFIG
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.stages import Run, build_all
    folder = tmp_path_factory.mktemp("per_part")
    data = make_dataset(folder / "data", n_good=12, n_per_defect=1, size=64, seed=5, categories=("fabric",))
    build_all(Run(load_category("mvtec_ad", data, "fabric"), MuscConfig(**TINY_CONFIG), str(folder / "artifacts")))
    pool = folder / "pool.h5"
    addition = add_run_to_pool(pool, folder / "artifacts/mvtec_ad/fabric")
    return pool, addition, folder / "artifacts/mvtec_ad/fabric"


@pytest.fixture(scope="module")
def stained_day(tmp_path_factory):
    """A day of 16 new fabric parts; 6 carry the same stain at the same place (a systematic fault)."""
    folder = tmp_path_factory.mktemp("day")
    make_dataset(folder / "made", n_good=PARTS, n_per_defect=0, size=64, seed=11, categories=("fabric",))
    yy, xx = np.mgrid[0:64, 0:64]
    stain = ((yy - 36) / 7.0) ** 2 + ((xx - 26) / 5.0) ** 2 <= 1.0  # one ellipse, the same on every stained part
    colour = np.array([150.0, 60.0, 30.0])
    day = folder / "2026-12-01"
    day.mkdir()
    paths, stained = [], []
    for index in range(PARTS):
        image = np.asarray(Image.open(folder / f"made/fabric/test/good/{index:03d}.png").convert("RGB"), np.float64)
        if index % 3 == 0 and len(stained) < STAINED:
            image[stain] = 0.25 * image[stain] + 0.75 * colour
            stained.append(index)
        path = day / f"part_{index:02d}.png"
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(str(path))
    assert len(stained) == STAINED
    return paths, [paths[i] for i in stained]


def cli(*args):
    from typer.testing import CliRunner
    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_pool_holds_good_parts_only(clean_pool, tmp_path):
    pool_path, addition, run = clean_pool
    pool = PoolFile(pool_path)
    left = dict(addition.left_out)
    defective = [f"fabric/{kind}/000.png" for kind in ("hole", "scratch", "stain")]
    for name in defective:
        assert "labelled defective" in left[name]
    assert not set(left) & set(pool.names)
    assert all("/good/" in name for name in pool.names)
    assert addition.added == len(pool) == 12 - sum(name.startswith("fabric/good/") for name in left)
    assert len(pool) >= 8

    shown = cli("pool", "add", "--pool", tmp_path / "cli.h5", run)
    assert shown.exit_code == 0, shown.output
    for name in defective:
        assert f"left out: {name} (labelled defective" in shown.stdout
    assert f"added {len(pool)} image(s)" in shown.stdout and f"{len(left)} left out" in shown.stdout
    assert PoolFile(tmp_path / "cli.h5").names == pool.names
    for flag in ("--include-flagged", "--include-anomalous"):  # the former name still works
        everything = cli("pool", "add", "--pool", tmp_path / f"all{flag}.h5", flag, run)
        assert everything.exit_code == 0 and "left out" not in everything.stdout, everything.output
        assert len(PoolFile(tmp_path / f"all{flag}.h5")) == 15


def test_a_repeated_defect_is_caught_and_every_part_scores_as_alone(clean_pool, stained_day, tmp_path):
    from musc.reference_pool.day import part_map
    pool = clean_pool[0]
    paths, stained = stained_day
    together = score_new_images(pool, paths, tmp_path / "together", device="cpu")
    alone = {}
    for index, path in enumerate(paths):
        result = score_new_images(pool, [path], tmp_path / f"alone_{index}", device="cpu")
        alone[path] = (result.rows[0], part_map(result.record, result.rows[0]["part"]))
    rows = {row["path"]: row for row in together.rows}
    for path in paths:  # the same, bit for bit: a part is scored on its own, whatever comes with it
        assert rows[path]["score"] == alone[path][0]["score"]
        np.testing.assert_array_equal(part_map(together.record, rows[path]["part"]), alone[path][1])
        assert rows[path]["decision"] == alone[path][0]["decision"]
    good = [p for p in paths if p not in stained]
    for ranked in ({p: rows[p]["score"] for p in paths}, {p: alone[p][0]["score"] for p in paths}):
        assert min(ranked[p] for p in stained) > max(ranked[p] for p in good)
    assert all(rows[p]["decision"] == "anomalous" for p in stained)

    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    again = score_new_images(pool, shuffled, tmp_path / "shuffled", device="cpu")
    assert [row["path"] for row in again.rows] == shuffled
    for row in again.rows:
        assert row["score"] == rows[row["path"]]["score"]
        np.testing.assert_array_equal(part_map(again.record, row["part"]), part_map(together.record, row["part"]))
        assert row["decision"] == rows[row["path"]]["decision"]


@pytest.mark.parametrize("settings", [ScoreSettings(), ScoreSettings(0.1, 0.6, aligned_radius=1, block_size=2)])
def test_a_part_scores_as_in_one_batch_of_the_pool_and_itself(settings):
    """Against P pool images read in blocks, a part gets exactly the score the batch function gives
    it in the set of P + 1 images made of the pool and the part (the rank window of P + 1)."""
    torch.manual_seed(4)
    pool = torch.nn.functional.normalize(torch.randn(9, 16, 8), dim=-1)
    parts = torch.nn.functional.normalize(torch.randn(5, 16, 8), dim=-1)
    scored = part_scores(parts, in_memory(pool), len(pool), settings)
    for index in range(len(parts)):
        batch = mutual_scores(torch.cat([pool, parts[index:index + 1]]), settings.topmin_min, settings.topmin_max,
                              radius=settings.aligned_radius)
        np.testing.assert_allclose(scored[index].numpy(), batch[-1].numpy(), rtol=0, atol=1e-6)


def copy_pool(source, target):
    """A pool file and its manifest, copied."""
    shutil.copy(source, target)
    shutil.copy(manifest_path(source), manifest_path(target))


def test_parts_confirmed_good_join_the_pool(clean_pool, stained_day, tmp_path, monkeypatch):
    """A day scored, reviewed (two good, one defect), then `musc pool add --pool P DAY_FOLDER`: the
    two good parts join the pool with the features they were scored with, read from the day's
    artifacts (no backbone forward), the others are named as left out; a second addition and a
    missing pool are refused with one line; a part's file changed after it was scored does not
    matter (the part is what was scored)."""
    from musc.inputs.backbones import Backbone
    pool = tmp_path / "pool.h5"
    copy_pool(clean_pool[0], pool)
    before = PoolFile(pool)
    (tmp_path / "incoming").mkdir()
    chosen, stained = [], []
    for path in stained_day[0][:5]:
        copy = tmp_path / "incoming" / Path(path).name
        shutil.copy(path, copy)
        chosen.append(str(copy))
        if path in stained_day[1]:
            stained.append(str(copy))
    good = [p for p in chosen if p not in stained][:2]
    out = tmp_path / "results"
    score_new_images(pool, chosen, out, device="cpu", day="2026-12-01")
    record = json.loads((out / "day.json").read_text())
    assert record["day"] == "2026-12-01" and record["pool"]["digest"] == before.digest
    assert record["pool"]["id"] == before.id
    assert [seen["name"] for seen in record["seen"]] == chosen
    reviewed = cli("review", out, "--good", good[0], "--good", Path(good[1]).name, "--defect", stained[0])
    assert reviewed.exit_code == 0, reviewed.output
    assert (tmp_path / "pool.verdicts.csv").is_file()

    forwards = []
    real = Backbone.extract
    monkeypatch.setattr(Backbone, "extract", lambda self, images: (forwards.append(len(images)), real(self, images))[1])
    Image.open(good[0]).transpose(Image.FLIP_LEFT_RIGHT).save(good[0])  # changed since: it joins as it was scored
    added = cli("pool", "add", "--pool", pool, out)
    assert added.exit_code == 0, added.output
    assert forwards == []  # the parts' features come from the day's artifacts
    grown = PoolFile(pool)
    assert grown.names == before.names + good and len(grown.self_scores) == len(grown) == len(before) + 2
    assert grown.id == before.id
    assert f"left out: {stained[0]} (verdict defect)" in added.stdout
    assert sum("(not reviewed)" in line for line in added.stdout.splitlines()) == len(chosen) - 3
    monkeypatch.setattr(Backbone, "extract", real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = musc.load_backbone(DEMO_BACKBONE, "none", 64, [0, 1, 2, 3], device="cpu",
                                      seed=grown.settings.features["seed"])  # the run's seed (42)
    scored = [p for p in stained_day[0][:5] if str(tmp_path / "incoming" / Path(p).name) in good]  # as scored
    tokens, _ = backbone.extract(torch.stack([backbone.preprocess(load_image(p)) for p in scored]))
    for r in grown.settings.r_list:
        for layer, layer_tokens in enumerate(tokens):
            np.testing.assert_allclose(grown.reader(r, layer)(len(before), len(grown)).numpy(),
                                       musc.aggregate(layer_tokens, r).numpy(), atol=1e-5)

    twice = cli("pool", "add", "--pool", pool, out)
    assert twice.exit_code == 2 and "already in the pool" in twice.stderr and twice.stderr.count("\n") == 1
    missing = cli("pool", "add", "--pool", tmp_path / "other.h5", out)
    assert missing.exit_code == 2 and "no such pool" in missing.stderr
    copy_pool(clean_pool[0], tmp_path / "other.h5")  # a copy of the pool the day was scored against: the same pool
    # --include-normal: also the parts decided normal that no inspector called a defect
    table = pd.read_csv(out / "scores.csv", keep_default_na=False)
    decided_normal = set(table.loc[table["decision"] == "normal", "path"])
    assert stained[1] not in decided_normal  # a stained part, not reviewed: decided anomalous, stays out
    with_normal = cli("pool", "add", "--pool", tmp_path / "other.h5", out, "--include-normal")
    assert with_normal.exit_code == 0, with_normal.output
    joined = [p for p in chosen if p in good or (p in decided_normal and p != stained[0])]
    assert PoolFile(tmp_path / "other.h5").names == before.names + joined and len(joined) > len(good)
    assert f"left out: {stained[0]} (verdict defect)" in with_normal.stdout
    assert f"left out: {stained[1]} (not reviewed, decided anomalous)" in with_normal.stdout


def test_the_daily_flow_records_its_day_for_review(prefect_harness, clean_pool, stained_day, tmp_path):
    """The daily flow's results folder names its day and pool: `musc review` on it records verdicts
    under that day, beside the pool."""
    from flows.daily import daily_folder_flow
    pool = tmp_path / "line3.h5"
    copy_pool(clean_pool[0], pool)
    paths, stained = stained_day
    root = Path(paths[0]).parent.parent
    out = tmp_path / "daily"
    summary = daily_folder_flow(str(pool), str(root), day="2026-12-01", out=str(out))
    assert summary["count"] == PARTS and summary["anomalous"] >= STAINED
    assert json.loads((out / "day.json").read_text())["day"] == "2026-12-01"
    reviewed = cli("review", out, "--defect", Path(stained[0]).name)
    assert reviewed.exit_code == 0, reviewed.output
    history = pd.read_csv(tmp_path / "line3.verdicts.csv", keep_default_na=False)
    assert list(history[["pool_id", "day", "name", "verdict"]].itertuples(index=False, name=None)) == [
        (PoolFile(pool).id, "2026-12-01", Path(stained[0]).name, "defect")]  # named within its day's folder
    assert history["part"][0] == musc.store.file_digest(stained[0])
    assert "2026-12-01:" in reviewed.stdout and "flagged of 16 part(s)" in reviewed.stdout
    # what the daily flow and the review wrote names no path of the worker but those a person gave
    # absolute (the pool, the day's folder under the root): a grep of every file, HDF5 included
    given = [str(pool), str(root / "2026-12-01"), str(root)]
    for path in [*out.rglob("*"), *tmp_path.glob("line3.*.csv")]:
        if path.is_file():
            text = path.read_bytes()
            for allowed in sorted(given, key=len, reverse=True):
                text = text.replace(allowed.encode(), b"")
            assert str(tmp_path).encode() not in text, f"{path} names {tmp_path}"
            assert str(Path(__file__).parents[1]).encode() not in text, f"{path} names the checkout"
