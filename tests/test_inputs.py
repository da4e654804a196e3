"""Inputs a run meets: images, masks, layouts, settings, YAML files and checkpoints that are unreadable,
huge, out of bounds or lead elsewhere; each refused before any work, in one line naming the file or field."""
import re
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch

from musc import store
from musc.inputs.config import ConfigError, MuscConfig
from musc.inputs.datasets import DatasetError, list_categories, load_category
from musc.inputs.images import UnreadableImage, load_image, load_mask

from conftest import TINY_CONFIG, run_category


@pytest.mark.usefixtures("prefect_harness")
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


@pytest.mark.usefixtures("prefect_harness")
def test_fewer_than_two_images_is_a_clear_error(tmp_path):
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", n_good=1, n_per_defect=0, size=32, categories=("fabric",))
    with pytest.raises(DatasetError, match="needs at least 2"):
        run_category(data, tmp_path / "artifacts")


@pytest.mark.usefixtures("prefect_harness")
def test_k_larger_than_n_is_rejected_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="^k_list: window size 40"):
        run_category(tiny_dataset, tmp_path / "artifacts", k_list=[1, 40])
    assert not (tmp_path / "artifacts").exists()


TINY_DATA = Path(__file__).parent / "data" / "tiny_clip.json"


def png(path, width, height):
    """A valid all-black 8-bit grayscale PNG of any size, a few KB, written without holding it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer, row, body = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        body.append(packer.compress(row))
    body.append(packer.flush())
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                           + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return Path(path)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_folder_layout_run_twice_with_its_artifacts_inside_scores_the_same_images(tiny_dataset,
                                                                                 tmp_path):
    from flows import category_flow
    data = tmp_path / "plant"
    shutil.copytree(tiny_dataset / "fabric" / "test", data)
    runs = [category_flow("folder", str(data), "plant", TINY_CONFIG, str(data / "artifacts")) for _ in range(2)]
    assert any((data / "artifacts").rglob("overlays/*.png"))  # outputs that a listing could have taken
    names = [list(store.open_artifact(run["extract"]["path"]).read("names")) for run in runs]
    assert names[0] == names[1] and len(names[0]) == 12 and not any("artifacts" in n for n in names[0])
    assert runs[0]["classify"]["digest"] == runs[1]["classify"]["digest"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_folder_marked_as_artifacts_is_never_listed_whatever_the_layout(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    old = data / "runs"  # an earlier run's artifacts, inside the dataset, shaped like a category
    shutil.copytree(data / "fabric" / "test", old / "test")
    store.mark_artifacts_root(old)
    assert list_categories("mvtec_ad", data) == ["fabric"]
    nested = data / "fabric" / "test" / "good" / "musc_out"
    shutil.copytree(data / "fabric" / "test" / "good", nested)
    store.mark_artifacts_root(nested)
    assert len(load_category("folder", data / "fabric" / "test").samples) == 12


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("name", ["../../x/y", "/tmp/elsewhere", "a/b", "..", "."])
def test_a_category_name_that_leads_elsewhere_is_refused(tiny_dataset, name):
    with pytest.raises(DatasetError, match="^category: .* is not a plain folder name"):
        load_category("mvtec_ad", tiny_dataset, name)
    with pytest.raises(store.ArtifactError, match="^category: "):
        store.artifact_path("/tmp/artifacts", "mvtec_ad", name, "extract", "0123")


@pytest.mark.usefixtures("prefect_harness")
def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path):
    big = png(tmp_path / "big.png", 13000, 13000)  # 169 megapixels, below Pillow's own limit
    assert big.stat().st_size < 300_000
    with pytest.raises(UnreadableImage, match=re.escape(f"{big}: image of 13000 x 13000 pixels is above the limit")):
        load_image(big)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_a_huge_mask_is_refused_naming_it(tmp_path):
    huge = png(tmp_path / "000_mask.png", 30000, 30000)
    with pytest.raises(UnreadableImage, match=re.escape(f"{huge}: mask of more than 100 megapixels is above")):
        load_mask(huge, 64, "truncate")


@pytest.mark.usefixtures("prefect_harness")
def test_a_mask_reached_through_a_symlink_outside_the_root_is_refused_like_an_image(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "fabric" / "test" / "hole", data)
    (data / "masks").mkdir()
    outside = shutil.copy(tiny_dataset / "fabric" / "ground_truth" / "hole" / "000_mask.png", tmp_path / "secret.png")
    (data / "masks" / "000.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="^mask: .*000.png points outside the dataset root"):
        load_category("folder", data)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("text", ["abc", "1e-9"])
def test_a_number_written_as_text_names_its_field(tmp_path, text):
    (tmp_path / "run.yaml").write_text(f"topmin_max: {text}\n")
    with pytest.raises(ConfigError, match=f"^topmin_max: expected a number, got '{text}'"):
        MuscConfig.from_yaml(tmp_path / "run.yaml")


@pytest.mark.usefixtures("prefect_harness")
def test_divide_num_larger_than_the_set_is_refused_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="^divide_num: splitting 12 images into 20 subsets"):
        run_category(tiny_dataset, tmp_path / "artifacts", divide_num=20)
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_label_other_than_0_or_1_is_refused_when_listing(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "fabric" / "test" / "good", data)
    (data / "labels.csv").write_text("image,label\n000.png,0\n001.png,2\n")
    with pytest.raises(DatasetError, match=re.escape(f"{data / 'labels.csv'}: line 3 needs") + ".*got '2'"):
        load_category("folder", data)


def _tiny_state():
    from musc.inputs.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(str(TINY_DATA), "none", 32, [0, 1], device="cpu").model.state_dict()


@pytest.mark.usefixtures("prefect_harness")
def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    from musc.inputs.backbones import load_backbone
    state = _tiny_state()
    state["visual.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ConfigError, match="^pretrained: .*nan.pt holds non-finite values .* in visual.conv1.weight"):
        load_backbone(str(TINY_DATA), str(tmp_path / "nan.pt"), 32, [0, 1], device="cpu")


@pytest.mark.usefixtures("prefect_harness")
def test_a_positional_embedding_of_the_wrong_length_is_one_line_naming_pretrained(tmp_path):
    from musc.inputs.backbones import load_backbone
    state = _tiny_state()
    state["visual.positional_embedding"] = state["visual.positional_embedding"][:-3]  # 1 + 16 - 3 rows
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ConfigError, match="^pretrained: .*short.pt does not fit .*visual.positional_embedding"):
        load_backbone(str(TINY_DATA), str(tmp_path / "short.pt"), 64, [0, 1], device="cpu")


@pytest.mark.usefixtures("prefect_harness")
def test_a_degree_larger_than_the_patch_grid_is_refused_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^r_list: degree 9 is larger than the patch grid \(8 x 8"):
        run_category(tiny_dataset, tmp_path / "artifacts", r_list=[1, 9])
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("layers", [(1.5,), ("a",), [0, 1.5], "a", (True, 1)])
def test_layers_that_are_not_integers_are_refused(layers):
    with pytest.raises(ConfigError, match="^layers: expected a list of integers"):
        MuscConfig(layers=layers)


@pytest.mark.usefixtures("prefect_harness")
def test_the_missing_mask_warning_is_given_once(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "fabric/ground_truth/hole/000_mask.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):  # the command line checks the category, then the flow, per category
            load_category("mvtec_ad", data, "fabric")
    assert [str(w.message) for w in caught if "have no mask" in str(w.message)] == [
        "category 'fabric': 1 anomalous image(s) have no mask (first: hole/000.png); pixel metrics leave them out"]


@pytest.mark.parametrize("field, value", [("divide_num", 1_000_000_000), ("image_size", 10**20), ("seed", 10**23),
                                          ("seed", 2**32), ("batch_size", 10**9), ("block_size", 10**9),
                                          ("aligned_radius", 10**9)])
def test_huge_integer_settings_are_refused_naming_the_field(field, value, tmp_path):
    with pytest.raises(ConfigError, match=rf"^{field}: must be <= \d+"):
        MuscConfig(**{field: value})
    config = tmp_path / "c.yaml"
    config.write_text(f"{field}: {value}\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^{field}: must be <= "):
        MuscConfig.from_yaml(config)
    assert time.monotonic() - started < 5


def test_the_largest_allowed_integers_still_pass():
    MuscConfig(divide_num=1000, image_size=4096, seed=2**32 - 1, batch_size=1024, block_size=4096)


@pytest.mark.parametrize("text", ["threshold: .nan", "threshold: .inf", "pixel_threshold: -.inf", "threshold: .NaN"])
def test_nan_and_infinite_thresholds_in_a_config_are_refused(text, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"^{text.split(':')[0]}: expected a finite number"):
        MuscConfig.from_yaml(config)


def test_an_aligned_radius_beyond_the_patch_grid_is_refused():
    from musc.inputs.backbone_spec import check_degrees

    from conftest import TINY_CONFIG
    cfg = MuscConfig.from_dict({**TINY_CONFIG, "aligned_radius": 100})  # 64 px / patch 8: an 8 x 8 grid
    with pytest.raises(ConfigError, match=r"^aligned_radius: 100 reaches beyond the patch grid \(8 x 8"):
        check_degrees(cfg.extract, cfg.r_list, cfg.aligned_radius)
    check_degrees(cfg.extract, cfg.r_list, 7)


def test_divide_num_beyond_the_images_is_refused_at_once(tiny_dataset):
    from musc.inputs.datasets import DatasetError, load_category
    images = load_category("mvtec_ad", tiny_dataset, "fabric")
    started = time.monotonic()
    with pytest.raises(DatasetError, match=r"^divide_num: splitting \d+ images into 1000 subsets"):
        images.check_size((1, 2, 3), 1000, 0)
    assert time.monotonic() - started < 1


BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
layers: *g
"""


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    with pytest.raises(ConfigError) as caught:
        MuscConfig.from_yaml(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: not valid YAML (alias *a refused") and len(message) < 300


def test_duplicate_yaml_keys_are_refused_naming_the_file_and_key(tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("seed: 1\nimage_size: 64\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(duplicate key 'seed' \(line 3"):
        MuscConfig.from_yaml(config)


def test_a_huge_value_gives_a_short_error_line(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("device: [" + ",".join(["1"] * 20_000) + "]\n")  # a 40 KB value
    with pytest.raises(ConfigError) as caught:
        MuscConfig.from_yaml(config)
    assert str(caught.value).startswith("device: expected text") and len(str(caught.value)) < 300


def test_a_config_with_a_bom_reads(tmp_path):
    config = tmp_path / "bom.yaml"
    config.write_bytes("\ufeffseed: 3\n".encode())
    assert MuscConfig.from_yaml(config).seed == 3


def test_labels_csv_with_a_utf8_bom_reads(tmp_path):
    from PIL import Image

    root = tmp_path / "plant"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "labels.csv").write_bytes("\ufeffimage,label\na.png,0\nb.png,0\nc.png,1\n".encode())
    samples = load_category("folder", root, "plant").samples
    assert {Path(s.path).name: s.label for s in samples} == {"a.png": 0, "b.png": 0, "c.png": 1}


def test_an_artifacts_folder_inside_an_image_folder_drops_no_image(tmp_path):
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", n_good=4, n_per_defect=1, size=32, seed=1, categories=("fabric",))
    before = [s.name for s in load_category("mvtec_ad", data, "fabric").samples]
    artifacts = store.mark_artifacts_root(data / "fabric" / "test" / "good" / "artifacts")
    (artifacts / "overlay.png").write_bytes((data / "fabric" / "test" / "good" / "000.png").read_bytes())
    after = [s.name for s in load_category("mvtec_ad", data, "fabric", exclude=[artifacts]).samples]
    assert after == before  # the good images beside it stay; nothing of ours is listed



@pytest.mark.usefixtures("prefect_harness")
def test_tiles_smaller_than_the_backbones_patch_grid_are_refused_before_any_work(tiny_dataset, tmp_path):
    """16 x 16 tiles of a 64-pixel image are 4-pixel tiles, each enlarged to 64 pixels for a backbone
    that sees 8 x 8 patches: less than a pixel per patch, hundreds of times the work."""
    with pytest.raises(ConfigError, match=r"^tiles: 16x16 tiles of .*\.png are 4 x 4 pixels, fewer than the 8 x 8 "
                                          r"patches the backbone sees"):
        run_category(tiny_dataset, tmp_path / "artifacts", tiles=[16, 16])
    assert not (tmp_path / "artifacts").exists()
    from musc.stages.extract import tiling_of
    images = load_category("mvtec_ad", tiny_dataset, "fabric")
    tiled = MuscConfig(**{**TINY_CONFIG, "tiles": [8, 8]})  # 8-pixel tiles: a pixel per patch, the least
    assert tiling_of(images, tiled.extract).count == 64


@pytest.mark.parametrize("flag, value", [("--tile-overlap", "0.2"), ("--tile-mixing", "all")])
def test_tile_settings_without_tiles_are_refused_in_one_line(tmp_path, flag, value, monkeypatch):
    from typer.testing import CliRunner

    from flows import cli, terminal
    monkeypatch.setattr(terminal, "prefect_environment", lambda: None)  # this process's environment stays
    (tmp_path / "data/cat/test/good").mkdir(parents=True)
    result = CliRunner().invoke(cli.app, ["run", "--dataset", "mvtec_ad", "--root", str(tmp_path / "data"),
                                          flag, value, "--artifacts", str(tmp_path / "artifacts")])
    name = flag[2:].replace("-", "_")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {name}: ")
    assert "applies only to a tiled run" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "artifacts").exists()
    MuscConfig(tiles=(2, 2), **{name: float(value) if name == "tile_overlap" else value})  # tiled: accepted
