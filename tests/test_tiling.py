"""Tiling of high-resolution parts (config ``tiles``, ``tile_overlap``, ``tile_mixing``): where the tiles
lie and how their maps are stitched, the keys, stitched maps at full resolution, small defects found
better than untiled at the same image size, reuse and resume after kill -9. Plain Python builds
(``build_all``), no Prefect."""
import json

import numpy as np
import pytest

from musc.method.threads import usable_cores
from PIL import Image

from conftest import TINY_CONFIG, assert_same_arrays, count_work, killed_child, read_all, snapshot
from musc import store
from musc.inputs.config import ConfigError, MuscConfig
from musc.inputs.datasets import load_category
from musc.inputs.images import load_mask
from musc.method.tiling import stitch, tile_boxes
from musc.stages import Run, build_all, ensure, reused_throughout, walk

TILED = {**TINY_CONFIG, "tiles": [2, 2], "tile_overlap": 0.1}
SMALL_PARTS = {"n_good": 6, "n_defective": 2, "size": 256, "seed": 3}  # 8 images of 256 px: 32 tiles


def test_tile_boxes_cover_the_image_row_major_with_the_overlap_asked():
    assert tile_boxes(100, 60, (2, 3)).tolist() == [[0, 0, 50, 20], [0, 20, 50, 40], [0, 40, 50, 60],
                                                     [50, 0, 100, 20], [50, 20, 100, 40], [50, 40, 100, 60]]
    # two tiles over 100 px sharing a quarter of a tile: 100 / 1.75 = 57.1 px each, the second from 42.9
    overlapped = tile_boxes(100, 100, (2, 2), 0.25)
    assert overlapped.tolist() == [[0, 0, 57, 57], [0, 43, 57, 100], [43, 0, 100, 57], [43, 43, 100, 100]]
    assert tile_boxes(7, 9, (1, 1)).tolist() == [[0, 0, 7, 9]]
    with pytest.raises(ValueError, match="do not fit"):
        tile_boxes(3, 3, (4, 1))


def test_stitching_upsamples_each_tile_into_its_box_and_averages_the_overlap():
    # 8 px wide, two tiles of 5 px overlapping by 40%: columns [0, 5) and [3, 8), shared columns 3 and 4
    boxes = tile_boxes(4, 8, (1, 2), 0.4)
    assert boxes.tolist() == [[0, 0, 4, 5], [0, 3, 4, 8]]
    stitched = stitch(np.array([[1.0] * 4, [3.0] * 4]), boxes, 4, 8)
    assert stitched.shape == (4, 8)
    np.testing.assert_allclose(stitched, np.array([[1, 1, 1, 2, 2, 3, 3, 3]] * 4, dtype=float))
    # a tile's own gradient lands in its box: patch grid [[0, 1], [0, 1]] spans the box's columns 0..1
    ramp = stitch(np.array([[0.0, 1.0, 0.0, 1.0]]), tile_boxes(2, 5, (1, 1)), 2, 5)
    np.testing.assert_allclose(ramp[0], [0, 0.25, 0.5, 0.75, 1.0])


def test_tiling_settings_are_read_and_checked_naming_the_field():
    assert MuscConfig(tiles="2x3").tiles == (2, 3)
    assert MuscConfig(tiles=[4, 4]).tiles == (4, 4)
    assert MuscConfig(tiles="2x3").to_dict()["tiles"] == [2, 3]
    for values, field in ((dict(tiles="0x2"), "tiles"), (dict(tiles=[1, 2, 3]), "tiles"), (dict(tiles="17x1"), "tiles"),
                          (dict(tile_overlap=0.5), "tile_overlap"), (dict(tile_overlap=-0.1), "tile_overlap"),
                          (dict(tile_mixing="random"), "tile_mixing")):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            MuscConfig(**values)


def test_tiling_enters_the_keys_and_untiled_keys_are_as_before():
    untiled = MuscConfig()
    # untiled runs record (and key) exactly the settings they did before tiling existed
    assert set(untiled.extract.recorded()) == {"backbone", "pretrained", "image_size", "layers", "quick_gelu", "seed"}
    assert set(untiled.score.recorded()) == {"topmin_min", "topmin_max", "divide_num", "seed", "aligned_radius",
                                             "msm_precision"}
    tiled = MuscConfig(tiles="2x2", tile_overlap=0.1)
    assert tiled.extract.recorded()["tiles"] == [2, 2] and tiled.extract.recorded()["tile_overlap"] == 0.1
    assert tiled.score.recorded()["tile_mixing"] == "aligned"
    assert tiled.replace(tile_overlap=0.2).extract.recorded() != tiled.extract.recorded()
    assert tiled.replace(tile_mixing="all").score.recorded() != tiled.score.recorded()


def _until_classify(run: Run) -> dict:
    """The stages up to classify built here (evaluate's reports are not needed to compare maps)."""
    refs = {}

    def resolve(spec, plans):
        if spec.name == "evaluate":
            return None
        refs[spec.name] = [ensure(p)[0] for p in plans]
        return refs[spec.name]
    walk(run, resolve)
    return refs


@pytest.fixture(scope="module")
def small_parts(tmp_path_factory):
    from musc.inputs.synthetic import make_parts
    return make_parts(tmp_path_factory.mktemp("parts"), **SMALL_PARTS)


@pytest.fixture(scope="module")
def tiled_run(small_parts, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("tiled_artifacts")
    run = Run(load_category("mvtec_ad", small_parts, "plate"), MuscConfig(**TILED), str(artifacts))
    return run, build_all(run)


def test_a_tiled_run_gives_stitched_maps_at_full_resolution_and_records_the_tiling(tiled_run):
    run, refs = tiled_run
    extract, classify = read_all(refs["extract"]), read_all(refs["classify"])
    n_images, tiles = 8, 4
    assert extract["tokens"].shape[1] == n_images * tiles           # a token row per tile
    assert extract["embeddings"].shape[0] == n_images              # an embedding per image
    np.testing.assert_allclose(np.linalg.norm(extract["embeddings"], axis=1), 1.0, rtol=1e-5)
    assert extract["masks"].shape == (n_images, 256, 256)           # masks at full resolution
    assert extract["tile_source"].tolist() == [i for i in range(n_images) for _ in range(tiles)]
    assert extract["tile_boxes"][:tiles].tolist() == tile_boxes(256, 256, (2, 2), 0.1).tolist()
    defective = [i for i, name in enumerate(extract["names"]) if "spot" in str(name)]
    for index in defective:  # the mask at full resolution is the mask file itself
        np.testing.assert_array_equal(extract["masks"][index], np.asarray(Image.open(run.images.samples[index].mask_path)) > 0)
    assert classify["patch_map"].shape == (n_images * tiles, 64)
    assert classify["maps"].shape == (n_images, 256, 256)           # stitched at the images' resolution
    np.testing.assert_array_equal(classify["image_scores_raw"], classify["maps"].reshape(n_images, -1).max(axis=1))
    recorded = store.open_artifact(refs["extract"]["path"]).config
    assert recorded["tiles"] == [2, 2] and recorded["tile_overlap"] == 0.1
    assert store.open_artifact(refs["score"][0]["path"]).config["tile_mixing"] == "aligned"
    metrics = json.loads(store.open_artifact(refs["evaluate"]["path"]).attrs["metrics"])
    assert metrics["pixel_auroc"] is not None                       # pixel metrics on the full-resolution maps


def test_a_repeated_tiled_run_recomputes_nothing(tiled_run, monkeypatch):
    run, refs = tiled_run
    root = run.artifacts
    before = snapshot(root)
    assert reused_throughout(run)
    from musc.stages import extract, score
    monkeypatch.setattr(extract, "extract_batch", lambda *a: pytest.fail("extracted again"))
    monkeypatch.setattr(score, "tile_minima", lambda *a, **k: pytest.fail("scored again"))
    again = build_all(run)
    assert again["classify"]["digest"] == refs["classify"]["digest"]
    assert snapshot(root) == before


def test_all_mixing_never_scores_a_tile_against_its_own_image(tmp_path):
    # each image is one noise block repeated 2 x 2: its four tiles are identical, and different from
    # every other image's. With only the smallest vote kept (topmin_max 0.05: k_max 1), a vote against
    # a tile of its own image would be 0 for every patch.
    good = tmp_path / "repeat" / "test" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(6):
        block = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(np.tile(block, (2, 2, 1))).save(good / f"{index:03d}.png")
    config = MuscConfig(**{**TINY_CONFIG, "r_list": [1], "tiles": "2x2", "tile_mixing": "all", "topmin_max": 0.05})
    refs = _until_classify(Run(load_category("mvtec_ad", tmp_path, "repeat"), config, str(tmp_path / "artifacts")))
    tokens = store.open_artifact(refs["extract"][0]["path"]).read("tokens")
    np.testing.assert_array_equal(tokens[:, 0], tokens[:, 3])       # the tiles of one image are the same
    scores = store.open_artifact(refs["score"][0]["path"]).read("scores")
    assert scores.shape[1] == 6 * 4
    assert scores.min() > 0.05                                       # every vote came from another image


def _pixel_metrics_at_full_resolution(refs, category, size):
    """Pixel AUROC and AUPRO of a run's maps against the masks at the images' full resolution
    (untiled maps upsampled bilinearly to it), so that both runs are judged on the same pixels."""
    import torch
    import torch.nn.functional as F
    from musc.method.metrics import pixel_metrics
    maps = torch.from_numpy(store.open_artifact(refs["classify"][0]["path"]).read("maps"))
    if maps.shape[-1] != size:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    masks = np.stack([load_mask(s.mask_path, size, category.mask_rule) for s in category.samples]).astype(bool)
    metrics = pixel_metrics(masks, maps.numpy())
    return metrics["pixel_auroc"], metrics["pixel_aupro"]


@pytest.mark.slow
def test_tiling_finds_small_defects_better_than_the_whole_image_at_the_same_image_size(tmp_path):
    # 512 px plates with pits of 6-10 px: at image size 64 the whole plate shows a pit as about one
    # pixel (an eighth of a patch of 8), 2 x 2 tiles as two. Measured on data seeds 0-2 (bench/tiling.py,
    # docs/PERFORMANCE.md "Tiling"): pixel AUROC about 0.90-0.91 untiled against 0.99-1.00 tiled,
    # AUPRO 0.60-0.77 against 0.95-0.99; the margins asked here are well inside those gaps.
    from musc.inputs.synthetic import make_parts
    root = make_parts(tmp_path / "data", n_good=10, n_defective=6, size=512, seed=0)
    category = load_category("mvtec_ad", root, "plate")
    results = {}
    for name, changes in (("untiled", {}), ("tiled", {"tiles": [2, 2]})):
        config = MuscConfig(**{**TINY_CONFIG, **changes})
        results[name] = _pixel_metrics_at_full_resolution(
            _until_classify(Run(category, config, str(tmp_path / "artifacts"))), category, 512)
    (untiled_auroc, untiled_aupro), (tiled_auroc, tiled_aupro) = results["untiled"], results["tiled"]
    assert tiled_auroc > untiled_auroc + 0.05, results
    assert tiled_aupro > untiled_aupro + 0.15, results


def _killed_build(data, artifacts, fault, tmp_path):
    """build_all of the tiled configuration in a child process that kills itself (SIGKILL) at the fault point."""
    killed_child("from musc.inputs.config import MuscConfig; from musc.inputs.datasets import load_category; "
                 "from musc.stages import Run, build_all; "
                 "build_all(Run(load_category('mvtec_ad', %r, 'plate'), MuscConfig(**%s), %r))"
                 % (str(data), json.dumps(TILED), str(artifacts)), fault, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fault,stage,parts", [("extract:1", "extract", 1), ("score:3", "score", 3)])
def test_a_killed_tiled_run_resumes_to_identical_artifacts(small_parts, tiled_run, tmp_path, monkeypatch,
                                                           fault, stage, parts):
    artifacts = tmp_path / "artifacts"
    _killed_build(small_parts, artifacts, fault, tmp_path)
    done = [p for p in (artifacts / "mvtec_ad/plate" / stage).glob("*.parts/*.h5") if store.valid_digest(p)]
    # killed at the fault point's part; tiles computed beside it on the other cores may have finished too
    assert parts <= len(done) <= parts + usable_cores() - 1 and not list((artifacts / "mvtec_ad/plate" / stage).glob("*.h5"))

    calls = count_work(monkeypatch)
    resumed = build_all(Run(load_category("mvtec_ad", small_parts, "plate"), MuscConfig(**TILED), str(artifacts)))
    n_layers, n_batches = 4, 2
    n_tiles = 2 * 4 * 3  # two degrees; per degree four tile positions of 8 images, 2 blocks of 4: 3 block pairs
    if stage == "extract":
        assert calls["batches"] == n_batches - parts
    else:
        assert calls["tiles"] == n_layers * (n_tiles - parts)
    _, reference = tiled_run
    for name in ("extract", "classify"):
        assert_same_arrays(read_all(reference[name]), read_all(resumed[name]))
    for ours, theirs in zip(reference["score"], resumed["score"]):
        assert_same_arrays(read_all(ours), read_all(theirs))
    assert not list(artifacts.rglob("*.parts"))


def test_a_tiled_category_needs_images_of_one_size_and_says_which_is_not(tmp_path):
    from musc.inputs.datasets import DatasetError
    from musc.inputs.synthetic import make_parts
    root = make_parts(tmp_path / "data", n_good=5, n_defective=1, size=128, seed=4)
    odd = root / "plate" / "test" / "good" / "001.png"
    Image.open(odd).resize((96, 128)).save(odd)
    run = Run(load_category("mvtec_ad", root, "plate"), MuscConfig(**TILED), str(tmp_path / "artifacts"))
    with pytest.raises(DatasetError, match=r"001\.png: 96 x 128 pixels, but .* 128 x 128; a tiled run needs images of one size"):
        build_all(run)


def test_large_tiled_maps_are_evaluated_at_a_bounded_resolution_with_the_datasets_mask_rule(tiled_run, monkeypatch):
    from musc.outputs import evaluation
    assert [evaluation.evaluation_reduction(h, w) for h, w in ((1024, 1024), (1025, 1024), (3000, 3000), (3000, 4000))] \
        == [1, 2, 3, 4]  # at most 1024 x 1024 pixels per image: 1000 x 1000, then 750 x 1000
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0:2, 0:2] = 1          # a whole 2 x 2 block
    mask[2, 3] = 1              # one pixel of another
    assert evaluation.reduce_mask(mask, 2, "truncate").tolist() == [[1, 0], [0, 0]]   # MVTec AD: all pixels
    assert evaluation.reduce_mask(mask, 2, "nonzero").tolist() == [[1, 0], [0, 1]]    # VisA, folders: any pixel
    np.testing.assert_allclose(evaluation.reduce_map(np.arange(16.0).reshape(4, 4), 2), [[2.5, 4.5], [10.5, 12.5]])

    run, refs = tiled_run
    extract, classify = store.open_artifact(refs["extract"]["path"]), store.open_artifact(refs["classify"]["path"])
    assert json.loads(store.open_artifact(refs["evaluate"]["path"]).attrs["pixel_resolution"]) == [256, 256]
    full = evaluation.EvaluationInputs.read(extract, classify)
    assert full.maps.shape == full.masks.shape == (8, 256, 256)
    monkeypatch.setattr(evaluation, "EVALUATION_MAX_PIXELS", 128 * 128)
    reduced = evaluation.EvaluationInputs.read(extract, classify)
    assert reduced.maps.shape == reduced.masks.shape == (8, 128, 128)
    np.testing.assert_allclose(reduced.maps[0], full.maps[0].reshape(128, 2, 128, 2).mean(axis=(1, 3)))
    blocks = full.masks.reshape(8, 128, 2, 128, 2)
    np.testing.assert_array_equal(reduced.masks, blocks.min(axis=(2, 4)))  # the plates are MVTec AD: truncate
