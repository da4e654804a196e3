"""The reference pool: what it records and refuses, new images scored as inside the pooled batch,
decisions, maps, the memory-bounded reader; the aligned-parts option."""
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import musc
from conftest import DEMO_BACKBONE, run_category
from musc import store
from musc.inputs.datasets import load_category
from musc.inputs.images import load_image, load_mask
from musc.inputs.synthetic import make_dataset
from musc.method.maps import anomaly_maps
from musc.method.msm import reference_mutual_scores
from musc.reference_pool import (DecisionRule, Images, PoolError, PoolFile, PoolSettings, calibrated_threshold,
                                 run_images, score_against_pool, write_pool)
from musc.reference_pool.day import overlay_name
from musc.reference_pool.pool import check_addition
from musc.inputs.config import ScoreSettings
from musc.reference_pool.scoring import in_memory, mutual_votes, patch_scores


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("demo"), seed=0, categories=("fabric",))
    category = load_category("mvtec_ad", root, "fabric")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = musc.load_backbone(DEMO_BACKBONE, "none", 128, [0, 1, 2, 3], device="cpu")
    tokens, embeddings = backbone.extract(torch.stack([backbone.preprocess(load_image(s.path))
                                                       for s in category.samples]))
    masks = np.stack([load_mask(s.mask_path, 128, "truncate") for s in category.samples])
    return category, tokens, embeddings, masks


@pytest.mark.slow
def test_single_image_against_pool_matches_full_batch(demo_features):
    category, tokens, embeddings, masks = demo_features
    full = musc.score_images(tokens, embeddings, 128)
    labels = np.array([s.label for s in category.samples])
    compared = 0
    for target in np.flatnonzero(labels)[:6]:
        pool_indices = [i for i in range(len(labels)) if i != target][:20]  # 20 earlier images
        new = [[musc.aggregate(t[[target]], r) for t in tokens] for r in (1, 3, 5)]
        pool = [[musc.aggregate(t[pool_indices], r) for t in tokens] for r in (1, 3, 5)]
        maps, scores = anomaly_maps([score_against_pool(n, p) for n, p in zip(new, pool)], 128)
        alone = roc_auc_score(masks[target].ravel(), maps[0].ravel())
        in_batch = roc_auc_score(masks[target].ravel(), full["maps"][target].ravel())
        assert abs(alone - in_batch) <= 0.02, (target, alone, in_batch)
        compared += 1
    assert compared == 6


@pytest.mark.parametrize("rule", [ScoreSettings(), ScoreSettings(0.1, 0.6, aligned_radius=1, block_size=2)])
def test_pool_votes_read_block_by_block_equal_batch_scoring(demo_features, rule):
    """New images against a pool read in blocks of 2 get exactly the batch's scores (mutual_scores,
    the batch's function), for default and non-default window and aligned radius."""
    _, tokens, _, _ = demo_features
    features = musc.aggregate(tokens[0][:11], 3)
    batch = musc.mutual_scores(features, rule.topmin_min, rule.topmin_max, radius=rule.aligned_radius)
    reads = []

    def pool(start, stop):
        reads.append(stop - start)
        return features[:8][start:stop]
    new = features[8:]
    alone = patch_scores(mutual_votes(in_memory(new), 3, pool, 8, rule), rule)
    np.testing.assert_allclose(alone.numpy(), batch[8:].numpy(), atol=1e-6)
    assert max(reads) <= rule.block_size


def fake_images(names, features, digests=None):
    """Images for a pool from in-memory features {r: (layers, n, L, C)}."""
    return Images(list(names), list(digests or names), np.arange(len(names), dtype=float),
                  lambda r, layer, idx: features[r][layer, np.sort(idx)], features[1].shape[2:])


def test_pool_is_bounded_oldest_first_and_calibrated_on_itself(tmp_path):
    """The pool keeps the newest max_images; its leave-one-out scores are the image scores the batch
    path gives the pool's images scored as one batch."""
    torch.manual_seed(0)
    features = {r: torch.nn.functional.normalize(torch.randn(2, 6, 16, 8), dim=-1).numpy() for r in (1, 3)}
    settings = PoolSettings("fabric", {"image_size": 32, "layers": [0, 1]}, (1, 3))
    path = tmp_path / "pool.h5"
    assert write_pool(path, settings, [fake_images("abc", {r: f[:, :3] for r, f in features.items()})], 5, {}).count == 3
    first = PoolFile(path)
    kept = write_pool(path, settings, [first.images(), fake_images("def", {r: f[:, 3:] for r, f in features.items()})],
                      5, {}, pool_id=first.id)
    assert kept.count == 5 and [name for name, _ in kept.dropped] == ["a"]  # the oldest, named
    pool = PoolFile(path)
    assert pool.names == list("bcdef") and pool.digests == list("bcdef") and pool.max_images == 5
    assert pool.id == first.id  # grown, the same pool
    kept = {r: torch.from_numpy(f[:, 1:]) for r, f in features.items()}
    np.testing.assert_array_equal(pool.reader(3, 1)(0, 5).numpy(), kept[3][1].numpy())
    batch = [torch.stack([musc.mutual_scores(kept[r][layer]) for layer in range(2)]) for r in (1, 3)]
    np.testing.assert_allclose(pool.self_scores, anomaly_maps(batch, 32)[1], atol=1e-6)


def test_decision_rule_calibrated_at_the_false_alarm_rate():
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))
    for rate, flagged in ((0.05, 5), (0.2, 20), (0.001, 0), (0.0, 0)):
        threshold = calibrated_threshold(scores, rate)
        assert (scores >= threshold).sum() == flagged, rate
        assert threshold > np.sort(scores)[-flagged - 1]
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrated_threshold(scores, 1.0)
    assert DecisionRule(threshold=0.5).apply(None) == (0.5, "fixed")


def test_pool_refuses_other_categories_settings_and_duplicates(tmp_path):
    features = {1: np.zeros((1, 3, 4, 2), np.float32)}
    settings = PoolSettings("fabric", {"image_size": 32, "layers": [0], "backbone": "b"}, (1,))
    write_pool(tmp_path / "pool.h5", settings, [fake_images("abc", features, ["d1", "d2", "d3"])], 10, {})
    pool = PoolFile(tmp_path / "pool.h5")
    new = fake_images(["x"], {1: features[1][:, :1]}, ["d9"])
    check_addition(pool, settings, new)  # the same settings, new content: accepted
    refusals = {
        "category 'fabric'": (PoolSettings("washer", settings.features, (1,)), new),
        r"features.image_size: 64 \(the pool: 32\)": (PoolSettings("fabric", {**settings.features, "image_size": 64}, (1,)), new),
        "backbone": (PoolSettings("fabric", {**settings.features, "backbone": "other"}, (1,)), new),
        r"aligned_radius: 1 \(the pool: None\)": (PoolSettings("fabric", settings.features, (1,), ScoreSettings(aligned_radius=1)), new),
        r"topmin_max: 0.5": (PoolSettings("fabric", settings.features, (1,), ScoreSettings(topmin_max=0.5)), new),
        r"r_list": (PoolSettings("fabric", settings.features, (1, 3)), new),
        "already in the pool": (settings, fake_images(["y", "z"], {1: features[1][:, :2]}, ["d7", "d2"])),
        "features of shape": (settings, fake_images(["x"], {1: np.zeros((1, 1, 9, 2), np.float32)}, ["d8"])),
    }
    for message, (other, images) in refusals.items():
        with pytest.raises(PoolError, match=message) as refused:
            check_addition(pool, other, images)
        assert "\n" not in str(refused.value)
    # bf16 screening gives the fp32 scores: a run screened in bf16 is not "other settings"
    check_addition(pool, PoolSettings("fabric", settings.features, (1,), ScoreSettings(msm_precision="bf16")), new)
    with pytest.raises(PoolError, match="max_images"):
        write_pool(tmp_path / "other.h5", settings, [], 0, {})


def test_overlay_names_are_distinct_per_name_and_part(tmp_path):
    """A day's overlay file is named by where the part was seen and by the part itself: one path
    seen holding two parts (a camera writing cam/part.png again and again) gives two overlays."""
    names = [overlay_name(name, part) for name, part in (("day1/part.png", "a" * 64), ("day2/part.png", "a" * 64),
                                                          ("day1/part.png", "b" * 64), ("day1/part.jpg", "a" * 64),
                                                          ("d/x.y.png", "a" * 64), ("d/x_y.png", "a" * 64))]
    assert len(set(names)) == len(names)
    assert [name.rsplit("-", 1)[0] for name in names[:3]] == ["day1__part", "day2__part", "day1__part"]
    for name in names:
        (tmp_path / name).write_bytes(b"")  # the file system takes each


def test_files_named_after_an_input_are_unique_and_bounded(tmp_path):
    """One naming rule (catalog.derived_name) for overlays, thumbnails, masks and score-new's maps:
    a readable part and a digest; a legal 250-character image name gives a file the file system takes."""
    from musc.outputs.figures import png_name
    from musc.store.catalog import derived_name
    long = "good/" + "p" * 246 + ".png"
    for name in (png_name(long), derived_name(long, suffix=".npy")):
        assert len(name) < 100 and name.startswith("good__ppp")
        (tmp_path / name).write_bytes(b"")  # the file system takes it
    names = ["crack/000.png", "crack/000.jpg", "crack__000.png", "x.y.png", "x_y.png", "a b.png", "a_b.png"]
    assert len({png_name(n) for n in names}) == len(names)
    assert png_name("crack/000.png") == png_name("crack/000.png")  # the same name, the same file


def cli(*args):
    """The musc command, in this process (output and exit status as on a terminal)."""
    from typer.testing import CliRunner
    from flows.cli import app
    result = CliRunner().invoke(app, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


NON_DEFAULT = {"topmin_min": 0.1, "topmin_max": 0.6, "aligned_radius": 1}


@pytest.mark.slow
def test_score_new_equals_the_batch_for_non_default_settings(prefect_harness, tiny_dataset, tmp_path):
    """A batch scored whole, and the same batch less two images pooled: each of the two images
    scored new against the pool gets the scores and map the batch function gives it in the set made
    of the pool and itself (the other new image never votes), from the whole run's own features
    (window 0.1-0.6, aligned radius 1). The two share a file name (000.png) in different folders:
    two maps. The pool refuses the run a second time, a run holding its images, and --max-images 0;
    an empty pool is explained."""
    full = run_category(tiny_dataset, tmp_path / "full", **NON_DEFAULT)
    part = tmp_path / "part"
    shutil.copytree(tiny_dataset, part)
    new = [tiny_dataset / "fabric/test/good/000.png", tiny_dataset / "fabric/test/hole/000.png"]
    for image in new:
        (part / image.relative_to(tiny_dataset)).unlink()
    pooled = run_category(part, tmp_path / "part_artifacts", **NON_DEFAULT)
    pool_file = tmp_path / "pool.h5"
    added = cli("pool", "add", "--pool", pool_file, "--include-anomalous", tmp_path / "part_artifacts/mvtec_ad/fabric")
    assert added.returncode == 0, added.stderr
    pool = PoolFile(pool_file)
    batch_names = list(store.open_artifact(full["extract"]["path"]).read("names"))
    assert len(pool) == len(batch_names) - 2
    assert pool.settings.score.aligned_radius == 1 and pool.settings.score.topmin_min == 0.1 and pool.settings.score.topmin_max == 0.6
    # calibration: the pool's leave-one-out scores are the pooled run's own batch scores
    np.testing.assert_allclose(pool.self_scores, store.open_artifact(pooled["classify"]["path"]).read("image_scores_raw"),
                               atol=1e-5)

    scored = cli("score-new", "--pool", pool_file, *new, "--out", tmp_path / "new")
    assert scored.returncode == 0, scored.stderr
    table = pd.read_csv(tmp_path / "new/scores.csv")
    assert list(table.columns) == ["path", "part", "score", "decision", "verdict", "map_png"] and len(table) == 2
    from musc.reference_pool.day import load_day, part_map
    record = load_day(tmp_path / "new")
    _, whole, _, _ = run_images(tmp_path / "full/mvtec_ad/fabric", include_flagged=True)
    in_pool = [whole.names.index(name) for name in pool.names]
    at = [batch_names.index(str(p.relative_to(tiny_dataset / "fabric/test"))) for p in new]
    assert len(set(table["map_png"])) == 2
    for row, index in zip(table.itertuples(), at):
        members = np.array(sorted(in_pool + [index]))
        per_degree = [torch.stack([musc.mutual_scores(torch.from_numpy(whole.read(r, layer, members)), 0.1, 0.6, radius=1)
                                   for layer in range(len(pool.settings.layers))])[:, list(members).index(index)][:, None]
                      for r in pool.settings.r_list]
        expected_maps, expected_scores = anomaly_maps(per_degree, pool.settings.image_size)
        assert row.score == pytest.approx(expected_scores[0], abs=1e-5)
        assert os.path.getsize(tmp_path / "new" / row.map_png) > 1000  # named from the results folder
        np.testing.assert_allclose(part_map(record, row.part), expected_maps[0], atol=1e-5)
    threshold = calibrated_threshold(pool.self_scores, 0.01)
    assert threshold > pool.self_scores.max()  # 10 pool images, 1%: no pool image would be flagged
    assert list(table["decision"]) == ["anomalous" if s >= threshold else "normal" for s in table["score"]]
    fixed = cli("score-new", "--pool", pool_file, new[1], "--threshold", "0", "--out", tmp_path / "fixed")
    assert fixed.returncode == 0 and "anomalous" in fixed.stdout

    info = cli("pool", "info", pool_file)
    assert info.returncode == 0 and "category 'fabric'" in info.stdout and f"{len(pool)} image(s)" in info.stdout
    for args, message in ((["--include-anomalous", tmp_path / "part_artifacts/mvtec_ad/fabric"], "already in the pool"),
                          ([tmp_path / "full/mvtec_ad/fabric"], "already in the pool"),
                          (["--max-images", "0", tmp_path / "full/mvtec_ad/fabric"], "--max-images")):
        refused = cli("pool", "add", "--pool", pool_file, *args)
        assert refused.returncode == 2 and message in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert PoolFile(pool_file).digest == pool.digest  # untouched

    write_pool(tmp_path / "empty.h5", pool.settings, [], 10, {})
    empty = cli("score-new", "--pool", tmp_path / "empty.h5", new[0])
    assert empty.returncode == 2 and "the pool is empty" in empty.stderr


def test_aligned_scoring_restricts_the_neighbourhood():
    torch.manual_seed(1)
    features = torch.nn.functional.normalize(torch.randn(7, 36, 8), dim=-1)
    wide = musc.mutual_scores(features, radius=5)  # radius covering the whole 6 x 6 grid = the paper's rule
    np.testing.assert_allclose(wide.numpy(), reference_mutual_scores(features).numpy(), atol=1e-6)
    narrow = musc.mutual_scores(features, radius=1)
    assert (narrow >= wide - 1e-6).all() and (narrow > wide + 1e-4).any()
    np.testing.assert_allclose(musc.mutual_scores(features, radius=1, block_size=3).numpy(), narrow.numpy(),
                               atol=1e-6)


def test_daily_table_rows_are_rounded_and_named_within_the_day_folder(tmp_path):
    from musc.reference_pool.daily import anomalous_parts, readable, table_rows
    day = tmp_path / "incoming" / "2026-12-01"
    maps = day / "musc" / "maps"
    rows = [{"file": day / "good_000.png", "score": 0.41234567891, "decision": "normal",
             "map_file": maps / "good_000.png"},
            {"file": day / "hole_000.png", "score": 0.9126229372799104, "decision": "anomalous",
             "map_file": maps / "hole_000.png", "path": "hole_000.png", "map_png": "maps/hole_000.png"},
            {"file": tmp_path / "elsewhere" / "x.png", "score": 0.5, "decision": "normal",
             "map_file": tmp_path / "out" / "x.png"}]
    shown = table_rows(rows, day)
    assert shown[0] == {"part": "hole_000.png", "score": "0.9126", "decision": "anomalous", "verdict": "",
                        "map": "musc/maps/hole_000.png"}  # anomalous first
    assert [r["part"] for r in shown] == ["hole_000.png", "x.png", "good_000.png"]
    assert [r["score"] for r in shown] == ["0.9126", "0.5000", "0.4123"]
    assert not any(str(tmp_path) in value for row in shown for value in row.values())  # no worker paths
    parts = anomalous_parts(rows, day)
    assert parts == [{"part": "hole_000.png", "path": "hole_000.png", "score": 0.9126,  # as scores.csv names them
                      "map_png": "maps/hole_000.png"}]
    summary = {"day": "2026-12-01", "count": 3, "anomalous": 1, "anomalous_rate": 1 / 3,
               "score_q50": 0.41234567891, "score_max": 0.9126229372799104, "threshold": 0.7012345678,
               "pool_size": 20}
    assert readable(summary) == {"day": "2026-12-01", "count": 3, "anomalous": 1, "anomalous_rate": 0.3333,
                                 "score_q50": 0.4123, "score_max": 0.9126, "threshold": 0.701235, "pool_size": 20}


def test_daily_run_is_named_by_its_pool_and_day():
    from flows.names import daily_name
    assert daily_name({"pool": "/data/pools/line3.h5", "root": "/data/incoming"}, "2026-12-01") == "line3 2026-12-01"
