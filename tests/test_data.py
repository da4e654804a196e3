"""Dataset layouts, image and mask reading (docs/METHOD.md section 1)."""
import numpy as np
import pytest
from PIL import Image

from musc.inputs.datasets import DatasetError, list_categories, load_category, subset_groups
from musc.inputs.images import UnreadableImage, load_image, load_mask
from musc.method.subsets import subsets


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture
def mvtec(tmp_path):
    rng = np.random.default_rng(0)
    for defect in ("good", "crack", "burn"):
        for i in range(2):
            save(tmp_path / "cable/test" / defect / f"{i:03d}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
            if defect != "good":
                mask = np.zeros((40, 60), np.uint8)
                mask[10:30, 20:40] = 255
                save(tmp_path / "cable/ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return tmp_path


def test_mvtec_order_labels_masks(mvtec):
    category = load_category("mvtec_ad", mvtec, "cable")
    assert [s.name for s in category.samples] == [
        "burn/000.png", "burn/001.png", "crack/000.png", "crack/001.png", "good/000.png", "good/001.png"]
    assert [s.label for s in category.samples] == [1, 1, 1, 1, 0, 0]
    assert all(s.mask_path.endswith(f"{s.name.split('/')[1][:3]}_mask.png") for s in category.samples[:4])
    assert category.samples[4].mask_path is None and category.mask_rule == "truncate"
    assert list_categories("mvtec_ad", mvtec) == ["cable"]


def test_mask_of_another_size_is_resized_and_truncated():
    """An MVTec mask resized bilinearly: only pixels that stay exactly 255 count (eroded edges)."""
    mask = np.zeros((90, 90), np.uint8)
    mask[30:60, 30:60] = 255
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as folder:
        path = save(pathlib.Path(folder) / "m.png", mask)
        truncated = load_mask(path, 40, "truncate")
        dilated = load_mask(path, 40, "nonzero")
    resized = np.asarray(Image.fromarray(mask).resize((40, 40), Image.BILINEAR))
    np.testing.assert_array_equal(truncated, resized == 255)
    np.testing.assert_array_equal(dilated, resized > 0)
    assert truncated.sum() < (30 * 40 / 90) ** 2 < dilated.sum()


def test_a_label_mask_of_0_and_1_is_its_mask_and_soft_low_values_are_said(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1  # a label image: 1 is the defect
    assert load_mask(save(tmp_path / "m.png", mask), 20, "truncate").sum() == 100
    mask[5:15, 5] = 60  # more than two levels, none at 255: which are defective is a guess, said
    with pytest.warns(UserWarning, match="non-zero"):
        binary = load_mask(save(tmp_path / "soft.png", mask), 20, "truncate")
    assert binary.sum() == 100


def test_sixteen_bit_and_grayscale_images(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    image = load_image(save(tmp_path / "deep.png", ramp))
    assert image.mode == "RGB"
    array = np.asarray(image)[..., 0].astype(float)
    np.testing.assert_allclose(array, ramp / 65535 * 255, atol=1)
    gray = load_image(save(tmp_path / "gray.png", np.full((8, 8), 77, np.uint8)))
    assert gray.mode == "RGB" and np.asarray(gray).max() == 77
    rgba = load_image(save(tmp_path / "rgba.png", np.full((8, 8, 4), 200, np.uint8)))
    assert rgba.mode == "RGB"


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_images_raise_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is None:  # truncated PNG
        save(path, np.zeros((64, 64, 3), np.uint8) + 9)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(UnreadableImage) as error:
        load_image(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_btad_layout(tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("ok", "ko"):
        for i in range(2):
            save(tmp_path / "01/test" / folder / f"{i:04d}.bmp", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    save(tmp_path / "01/ground_truth/ko/0000.png", np.full((16, 16), 255, np.uint8))
    category = load_category("btad", tmp_path, "01")
    assert [s.label for s in category.samples] == [1, 1, 0, 0]
    assert category.samples[0].mask_path.endswith("0000.png") and category.samples[1].mask_path is None


def test_visa_layout(tmp_path):
    rng = np.random.default_rng(2)
    rows = ["object,split,label,image,mask"]
    for i, kind in enumerate(["Normal", "Anomaly", "Normal"]):
        image = f"candle/Data/Images/{kind}/{i:03d}.JPG"
        save(tmp_path / image, rng.integers(0, 255, (12, 18, 3), dtype=np.uint8))
        mask = ""
        if kind == "Anomaly":
            mask = f"candle/Data/Masks/Anomaly/{i:03d}.png"
            save(tmp_path / mask, np.full((12, 18), 1, np.uint8))
        rows.append(f"candle,test,{kind.lower()},{image},{mask}")
    rows.append("candle,train,normal,candle/Data/Images/Normal/000.JPG,")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    category = load_category("visa", tmp_path, "candle")
    assert [s.label for s in category.samples] == [0, 1, 0]
    assert category.mask_rule == "nonzero" and list_categories("visa", tmp_path) == ["candle"]
    assert load_mask(category.samples[1].mask_path, 24, "nonzero").all()


def test_folder_layout_with_labels_and_masks(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png", "sub/c.png"):
        save(tmp_path / name, rng.integers(0, 255, (10, 10, 3), dtype=np.uint8))
    save(tmp_path / "masks/b.png", np.full((10, 10), 255, np.uint8))
    (tmp_path / "labels.csv").write_text("image,label\na.png,0\nb.png,1\nsub/c.png,0\n")
    category = load_category("folder", tmp_path)
    assert [s.name for s in category.samples] == ["a.png", "b.png", "sub/c.png"]
    assert [s.label for s in category.samples] == [0, 1, 0]
    assert category.samples[1].mask_path is not None
    unlabelled = tmp_path / "plain"
    save(unlabelled / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert load_category("folder", unlabelled).samples[0].label is None


@pytest.mark.parametrize("dataset,root,category,message", [
    ("mvtec_ad", "missing", "cable", "^root: dataset folder"),
    ("mvtec_ad", ".", "nope", "^category 'nope': no folder"),
    ("kitti", ".", "x", "^dataset: unknown layout"),
    ("visa", ".", "candle", "^root: VisA split file"),
])
def test_bad_datasets_give_one_line_errors(mvtec, dataset, root, category, message):
    with pytest.raises(DatasetError, match=message):
        load_category(dataset, mvtec / root if root != "." else mvtec, category)


def test_empty_category_is_an_error(tmp_path):
    (tmp_path / "empty/test/good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_category("mvtec_ad", tmp_path, "empty")


def test_paths_may_not_escape_the_root(tmp_path):
    outside = tmp_path / "outside.png"
    save(outside, np.zeros((4, 4, 3), np.uint8))
    root = tmp_path / "root"
    (root / "cat/test/good").mkdir(parents=True)
    (root / "cat/test/good/000.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        load_category("mvtec_ad", root, "cat")


def test_subsets_partition_stratified_and_seeded(mvtec):
    samples = load_category("mvtec_ad", mvtec, "cable").samples
    parts = subsets(subset_groups(samples), 2, seed=42)
    assert sorted(i for part in parts for i in part) == list(range(len(samples)))
    for part in parts:  # one image of each defect type per subset
        assert sorted(samples[i].defect_type for i in part) == ["burn", "crack", "good"]
    assert parts == subsets(subset_groups(samples), 2, seed=42)
    assert subsets(subset_groups(samples), 1, seed=0) == [list(range(len(samples)))]


def test_palette_cmyk_and_tiny_images_are_converted(tmp_path):
    from musc.inputs.backbones import preprocess
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    palette.save(tmp_path / "palette.png")
    Image.new("CMYK", (10, 10), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    save(tmp_path / "tiny.png", np.full((3, 3, 3), 200, np.uint8))  # smaller than one patch
    for name in ("palette.png", "cmyk.jpg", "tiny.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB"
        assert preprocess(image, 32).shape == (3, 32, 32)


def test_huge_image_is_refused_without_decoding(tmp_path):
    import struct
    import zlib
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)  # 1.6 gigapixels, RGB
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(UnreadableImage, match="huge.png: image of more than 100 megapixels is above the limit"):
        load_image(path)


def test_missing_masks_and_duplicate_names_warn(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("000.png", "000.jpg", "001.png"):
        save(tmp_path / "cat/test/crack" / name, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    save(tmp_path / "cat/ground_truth/crack/000_mask.png", np.full((8, 8), 255, np.uint8))
    with pytest.warns(UserWarning) as caught:
        category = load_category("mvtec_ad", tmp_path, "cat")
    messages = " ".join(str(w.message) for w in caught)
    assert "1 anomalous image(s) have no mask" in messages and "crack/001.png" in messages
    assert "share a name" in messages and "000" in messages
    assert len(category.samples) == 3
