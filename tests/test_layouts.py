"""The dataset layouts, each generated small from the synthetic MVTec AD dataset (its images and
exact masks moved into the layout as the dataset is distributed: BTAD's per-product suffixes,
VisA's split file, Real-IAD's folders and JSON split, ...), read back, and run end to end."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from musc import store
from musc.inputs.datasets import DATASETS, DatasetError, list_categories, load_category, subset_groups
from musc.inputs.layouts.registry import layout as registered
from musc.inputs.images import load_mask
from musc.method.subsets import subsets
from musc.inputs.synthetic import DEFECTS, make_dataset

from conftest import TINY_CONFIG

SIZE = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """12 normal and 12 defective synthetic images (4 per defect type) with their masks."""
    root = make_dataset(tmp_path_factory.mktemp("source"), n_good=12, n_per_defect=4, size=SIZE, seed=5,
                        categories=("fabric",))
    goods = sorted((root / "fabric/test/good").glob("*.png"))
    defects = [(kind, image, root / "fabric/ground_truth" / kind / f"{image.stem}_mask.png")
               for kind in DEFECTS for image in sorted((root / "fabric/test" / kind).glob("*.png"))]
    return goods, defects


def copy(source: Path, target: Path, convert: str | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if convert:
        Image.open(source).convert(convert).save(target)
    else:
        shutil.copyfile(source, target)
    return target


def split_mask(mask: Path, folder: Path, names=("000.png", "001.png"), other_value: int = 70) -> None:
    """The mask's left and right halves as two files, the second with a value other than 255 (LOCO
    marks defect types by pixel value): together they are the mask."""
    array = np.asarray(Image.open(mask).convert("L"))
    left, right = array.copy(), array.copy()
    left[:, SIZE // 2:] = 0
    right[:, :SIZE // 2] = 0
    right[right > 0] = other_value
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(left).save(folder / names[0])
    Image.fromarray(right).save(folder / names[1])


def make_ad2(root: Path, source, n_private: int = 6) -> Path:
    goods, defects = source
    for image in goods[:2]:
        copy(image, root / "fabric/train/good" / image.name)
        copy(image, root / "fabric/validation/good" / image.name)
    for image in goods[2:]:
        copy(image, root / "fabric/test_public/good" / image.name)
    for kind, image, mask in defects:
        copy(image, root / "fabric/test_public/bad" / f"{kind}_{image.name}")
        copy(mask, root / "fabric/test_public/ground_truth/bad" / f"{kind}_{image.stem}_mask.png")
    mixed = goods[:n_private // 2] + [image for _, image, _ in defects[:n_private // 2]]
    for number, image in enumerate(mixed):
        copy(image, root / "fabric/test_private" / f"{number:03d}.png")
        copy(image, root / "fabric/test_private_mixed" / f"{number:03d}.png")
    return root


def make_loco(root: Path, source, mask_names=("000.png", "001.png"), kinds=None) -> Path:
    """MVTec LOCO (AutoVI with one mask named 0000.png): ground_truth/<type>/<stem>/<masks>."""
    goods, defects = source
    kinds = kinds or {"hole": "structural_anomalies", "scratch": "structural_anomalies",
                      "stain": "logical_anomalies"}
    for image in goods:
        copy(image, root / "fabric/test/good" / image.name)
    for kind, image, mask in defects:
        name = f"{kind}_{image.stem}"
        copy(image, root / "fabric/test" / kinds[kind] / f"{name}.png")
        folder = root / "fabric/ground_truth" / kinds[kind] / name
        if len(mask_names) == 1:
            copy(mask, folder / mask_names[0])
        else:
            split_mask(mask, folder, mask_names)
    return root


def make_mpdd(root: Path, source) -> Path:
    """MVTec AD's layout; mask names alternate between <stem>_mask.png and <stem>.png."""
    goods, defects = source
    for image in goods:
        copy(image, root / "bracket_black/test/good" / image.name)
    for number, (kind, image, mask) in enumerate(defects):
        name = f"{image.stem}_mask.png" if number % 2 else f"{image.stem}.png"
        copy(image, root / "bracket_black/test" / kind / image.name)
        copy(mask, root / "bracket_black/ground_truth" / kind / name)
    return root


def make_real_iad(root: Path, source, with_json: bool = True) -> Path:
    """Two camera views (C1, C2) of 6 normal and 6 defective parts; images as jpg, masks as
    <stem>.png for the defective parts, and the split file realiad_jsons/fabric.json."""
    goods, defects = source
    entries = []
    for number in range(6):
        for view, image in (("C1", goods[2 * number]), ("C2", goods[2 * number + 1])):
            rel = f"OK/S{number:04d}/fabric_{number:04d}_OK_{view}_20230101.jpg"
            copy(image, root / "fabric" / rel, "RGB")
            entries.append({"category": "fabric", "anomaly_class": "OK", "image_path": rel, "mask_path": None})
    for number in range(6):
        for view, (kind, image, mask) in (("C1", defects[2 * number]), ("C2", defects[2 * number + 1])):
            stem = f"NG/{kind.upper()}/S{100 + number:04d}/fabric_{100 + number:04d}_NG_{view}_20230101"
            copy(image, root / "fabric" / f"{stem}.jpg", "RGB")
            copy(mask, root / "fabric" / f"{stem}.png")
            entries.append({"category": "fabric", "anomaly_class": kind.upper(), "image_path": f"{stem}.jpg",
                            "mask_path": f"{stem}.png"})
    if with_json:
        split = root / "realiad_jsons" / "fabric.json"
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text(json.dumps({"meta": {"prefix": "", "normal_class": "OK"}, "train": [], "test": entries}))
    return root


def make_mvtec(root: Path, source) -> Path:
    """MVTec AD: test/<type>/<stem>.png, ground_truth/<type>/<stem>_mask.png."""
    goods, defects = source
    for image in goods:
        copy(image, root / "fabric/test/good" / image.name)
    for kind, image, mask in defects:
        copy(image, root / "fabric/test" / kind / image.name)
        copy(mask, root / "fabric/ground_truth" / kind / f"{image.stem}_mask.png")
    return root


# BTAD as distributed: (image suffix, mask suffix) per product
BTAD_SUFFIXES = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def make_btad(root: Path, source, product: str = "03") -> Path:
    """One BTAD product: test/{ok,ko}/NNNN<image suffix>, ground_truth/ko/NNNN<mask suffix>."""
    goods, defects = source
    image_suffix, mask_suffix = BTAD_SUFFIXES[product]
    for number, image in enumerate(goods):
        copy(image, root / product / "test/ok" / f"{number:04d}{image_suffix}", "RGB")
    for number, (_, image, mask) in enumerate(defects):
        copy(image, root / product / "test/ko" / f"{number:04d}{image_suffix}", "RGB")
        copy(mask, root / product / "ground_truth/ko" / f"{number:04d}{mask_suffix}", "L")
    return root


def make_visa(root: Path, source, folders: bool = True, bom: bool = False) -> Path:
    """VisA's candle: Data/Images/{Normal,Anomaly}/NNN.JPG (without those folders: Data/Images/NNN.JPG),
    Data/Masks/Anomaly/NNN.png, listed by split_csv/1cls.csv."""
    goods, defects = source
    rows = ["object,split,label,image,mask"]
    for number, (image, mask) in enumerate([(g, None) for g in goods] + [(i, m) for _, i, m in defects]):
        kind = "Anomaly" if mask else "Normal"
        rel = f"candle/Data/Images/{kind + '/' if folders else ''}{number:03d}.JPG"
        copy(image, root / rel, "RGB")
        mask_rel = f"candle/Data/Masks/Anomaly/{number:03d}.png" if mask else ""
        if mask:
            copy(mask, root / mask_rel)
        rows.append(f"candle,test,{kind.lower()},{rel},{mask_rel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv/1cls.csv").write_bytes(("\ufeff" if bom else "").encode() + ("\n".join(rows) + "\n").encode())
    return root


def make_folder(root: Path, source) -> Path:
    """A plain folder: good/<stem>.png, bad/<type>_<stem>.png with masks/bad/<type>_<stem>.png."""
    goods, defects = source
    for image in goods:
        copy(image, root / "good" / image.name)
    for kind, image, mask in defects:
        copy(image, root / "bad" / f"{kind}_{image.name}")
        copy(mask, root / "masks/bad" / f"{kind}_{image.stem}.png")
    return root


def make_kolektor(root: Path, source) -> Path:
    """Six kosNN folders of four parts each; a defective part's label is its mask, a good part's
    label is empty."""
    goods, defects = source
    images = [(image, None) for image in goods] + [(image, mask) for _, image, mask in defects]
    order = np.random.default_rng(0).permutation(len(images))
    for slot, index in enumerate(order):
        image, mask = images[index]
        folder = root / f"kos{slot // 4 + 1:02d}"
        copy(image, folder / f"Part{slot % 4}.jpg", "L")
        label = folder / f"Part{slot % 4}_label.bmp"
        if mask is None:
            Image.new("L", (SIZE, SIZE), 0).save(label)
        else:
            copy(mask, label, "L")
    return root


# --- the registry --------------------------------------------------------------------------------

def test_every_layout_declares_its_mask_rule_and_k_list_once():
    assert {"mvtec_ad", "visa", "btad", "folder", "mvtec_ad2", "mvtec_loco", "mpdd", "real_iad", "kolektor",
            "autovi"} == set(DATASETS)
    for name in DATASETS:
        assert registered(name).mask_rule in ("truncate", "nonzero") and registered(name).k_list
    assert registered("visa").k_list == (1, 8, 9) and registered("mvtec_ad").mask_rule == "truncate"
    with pytest.raises(DatasetError, match="dataset: unknown layout 'kitti'"):
        registered("kitti")


# --- masks by stem, whatever their suffix (MVTec AD's manner) ------------------------------------

def no_warnings_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_category(*args, **kwargs)


@pytest.mark.parametrize("product", sorted(BTAD_SUFFIXES))
def test_btad_masks_are_found_whatever_their_suffix(tmp_path, source, product):
    root = make_btad(tmp_path, source, product)
    category = no_warnings_load("btad", root, product)  # no "have no mask" warning
    anomalous = [s for s in category.samples if s.label]
    assert len(anomalous) == 12 and len(category.samples) == 24
    assert all(Path(s.mask_path).name == Path(s.name).stem + BTAD_SUFFIXES[product][1] for s in anomalous)
    other = ".png" if BTAD_SUFFIXES[product][1] == ".bmp" else ".bmp"
    shutil.copyfile(anomalous[0].mask_path, Path(anomalous[0].mask_path).with_suffix(other))
    with pytest.raises(DatasetError, match=r"ko/0000\.\w+: two masks, 0000\.(bmp|png) and 0000\.(bmp|png)"):
        load_category("btad", root, product)


@pytest.mark.parametrize("dataset", ["mvtec_ad", "mpdd"])
def test_mvtec_like_masks_of_another_suffix_are_found_two_are_refused(tmp_path, source, dataset):
    root = make_mvtec(tmp_path, source)
    masks = root / "fabric/ground_truth/hole"
    copy(masks / "000_mask.png", masks / "000.bmp", "L")
    (masks / "000_mask.png").unlink()
    sample = next(s for s in no_warnings_load(dataset, root, "fabric").samples if s.name == "hole/000.png")
    assert Path(sample.mask_path).name == "000.bmp"
    shutil.copyfile(masks / "001_mask.png", masks / "000_mask.png")
    with pytest.raises(DatasetError, match=r"hole/000\.png: two masks, 000_mask\.png and 000\.bmp"):
        load_category(dataset, root, "fabric")


@pytest.mark.parametrize("dataset", ["mvtec_ad", "btad", "mpdd", "folder"])
def test_a_mask_name_too_long_for_the_file_system_is_absent(tmp_path, source, dataset):
    """Images named with 250 characters before the suffix: their mask name with ``_mask`` would be
    too long for the file system (ENAMETOOLONG when probed); the mask present is found, a missing
    one is missing, and nothing crashes."""
    goods, defects = source
    long = "x" * 250
    images, masks, category = {
        "folder": (tmp_path / "bad", tmp_path / "masks/bad", None),
        "btad": (tmp_path / "01/test/ko", tmp_path / "01/ground_truth/ko", "01"),
    }.get(dataset, (tmp_path / "fabric/test/hole", tmp_path / "fabric/ground_truth/hole", "fabric"))
    good = "ok" if dataset == "btad" else "good"
    for image in goods[:4]:
        copy(image, images.parent / good / image.name)
    copy(defects[0][1], images / f"{long}a.png")
    copy(defects[0][2], masks / f"{long}a.png")
    copy(defects[1][1], images / f"{long}b.png")  # no mask
    if dataset == "mpdd":
        copy(defects[1][2], masks / f"{long}b.png")  # MPDD refuses a missing mask folder, not a missing mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = {Path(s.name).name: s for s in load_category(dataset, tmp_path, category).samples}
    assert Path(samples[f"{long}a.png"].mask_path).name == f"{long}a.png"
    assert (samples[f"{long}b.png"].mask_path is None) == (dataset != "mpdd")


# --- VisA ----------------------------------------------------------------------------------------

def test_visa_labels_come_from_the_label_column(tmp_path, source):
    """Without its Normal/Anomaly folders (a copy flattened, a split file of one's own), VisA's images
    are labelled by the label column; a BOM before the header is no part of a column name."""
    root = make_visa(tmp_path, source, folders=False, bom=True)
    category = no_warnings_load("visa", root, "candle")
    assert [s.label for s in category.samples] == [0] * 12 + [1] * 12
    assert all((s.mask_path is not None) == bool(s.label) for s in category.samples)
    assert [s.defect_type for s in category.samples] == ["good"] * 12 + ["bad"] * 12
    assert list_categories("visa", root) == ["candle"]


def test_visa_anomaly_without_mask_warns_once_naming_the_image(tmp_path, source):
    root = make_visa(tmp_path, source)
    split = root / "split_csv/1cls.csv"
    lines = split.read_text().splitlines()
    lines[13] = lines[13].rsplit(",", 1)[0] + ","  # the first anomaly row, its mask column empty
    split.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            category = load_category("visa", root, "candle")
    assert [str(w.message) for w in caught] == [
        "category 'candle': 1 anomalous image(s) have no mask in 1cls.csv (first: "
        "candle/Data/Images/Anomaly/012.JPG); pixel metrics leave them out"]
    assert category.samples[12].label == 1 and category.samples[12].mask_path is None


def test_visa_refuses_a_label_other_than_normal_or_anomaly(tmp_path, source):
    root = make_visa(tmp_path, source)
    split = root / "split_csv/1cls.csv"
    lines = split.read_text().splitlines()
    lines[2] = lines[2].replace(",normal,", ",defect,")
    split.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"1cls\.csv: line 3 has label 'defect', expected one of normal, anomaly"):
        load_category("visa", root, "candle")


# --- MVTec AD 2 ----------------------------------------------------------------------------------

def test_mvtec_ad2_public_set_is_evaluated_private_sets_are_categories(tmp_path, source):
    root = make_ad2(tmp_path, source)
    assert list_categories("mvtec_ad2", root) == ["fabric"]  # the private sets are scored when named
    public = load_category("mvtec_ad2", root, "fabric")
    assert len(public.samples) == 10 + 12  # train/ and validation/ are not scored
    assert [s.label for s in public.samples] == [1] * 12 + [0] * 10
    assert all(s.mask_path.endswith(f"ground_truth/bad/{Path(s.name).stem}_mask.png")
               for s in public.samples if s.label)
    assert public.mask_rule == "nonzero"
    for name in ("fabric_private", "fabric_private_mixed"):
        private = load_category("mvtec_ad2", root, name)
        assert len(private.samples) == 6
        assert all(s.label is None and s.mask_path is None for s in private.samples)


def test_mvtec_ad2_bad_layouts_name_the_file(tmp_path, source):
    root = make_ad2(tmp_path, source)
    masks = root / "fabric/test_public/ground_truth/bad"
    (masks / "stray_mask.png").write_bytes((masks / "hole_000_mask.png").read_bytes())
    with pytest.raises(DatasetError, match=r"stray_mask\.png: a mask for no image"):
        load_category("mvtec_ad2", root, "fabric")
    (masks / "stray_mask.png").unlink()
    shutil.copyfile(masks / "hole_000_mask.png", masks / "hole_000.png")  # a second mask of hole_000.png
    with pytest.raises(DatasetError, match=r"hole_000\.png: two masks, hole_000_mask\.png and hole_000\.png"):
        load_category("mvtec_ad2", root, "fabric")
    shutil.rmtree(root / "fabric/test_public/ground_truth")
    with pytest.raises(DatasetError, match=r"ground_truth/bad: no ground-truth folder for the 12 image"):
        load_category("mvtec_ad2", root, "fabric")
    shutil.rmtree(root / "fabric/test_private_mixed")
    with pytest.raises(DatasetError, match=r"no folder .*fabric/test_private_mixed \(private test sets here: "
                                           r"fabric_private\)"):
        load_category("mvtec_ad2", root, "fabric_private_mixed")


# --- MVTec LOCO and AutoVI ---------------------------------------------------------------------

def test_mvtec_loco_combines_the_masks_of_an_image(tmp_path, source):
    root = make_loco(tmp_path, source)
    assert list_categories("mvtec_loco", root) == ["fabric"]
    category = load_category("mvtec_loco", root, "fabric")
    assert [s.defect_type for s in category.samples] == (
        ["good"] * 12 + ["logical_anomalies"] * 4 + ["structural_anomalies"] * 8)
    assert category.mask_rule == "nonzero"
    _, defects = source
    originals = {f"{kind}_{image.stem}": mask for kind, image, mask in defects}
    both_halves = 0
    for sample in category.samples[12:]:
        assert isinstance(sample.mask_path, tuple) and [Path(m).name for m in sample.mask_path] == ["000.png", "001.png"]
        original = originals[Path(sample.name).stem]
        for size in (SIZE, 40):  # the union of the two halves is the whole mask, whatever the pixel values
            np.testing.assert_array_equal(load_mask(sample.mask_path, size, "nonzero"),
                                          load_mask(str(original), size, "nonzero"))
        halves = [load_mask(m, SIZE, "nonzero").sum() for m in sample.mask_path]
        both_halves += min(halves) > 0
    assert both_halves >= 3  # defects that cross the middle: each file holds part of the mask


def test_mvtec_loco_bad_layouts_name_the_folder(tmp_path, source):
    root = make_loco(tmp_path, source)
    truth = root / "fabric/ground_truth/logical_anomalies"
    shutil.copytree(truth / "stain_000", truth / "stain_999")
    with pytest.raises(DatasetError, match=r"logical_anomalies/stain_999: a mask for no image"):
        load_category("mvtec_loco", root, "fabric")
    shutil.rmtree(truth / "stain_999")
    for mask in (truth / "stain_001").iterdir():
        mask.unlink()
    with pytest.raises(DatasetError, match=r"stain_001: a mask folder holding no mask"):
        load_category("mvtec_loco", root, "fabric")
    shutil.rmtree(truth)
    with pytest.raises(DatasetError, match=r"logical_anomalies: no ground-truth folder for the 4 image"):
        load_category("mvtec_loco", root, "fabric")


def test_combined_masks_of_different_sizes_are_refused(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "000.png")
    Image.new("L", (8, 6), 255).save(tmp_path / "001.png")
    with pytest.raises(DatasetError, match=r"001\.png: mask of 8 x 6 pixels, but .*000\.png of the same image has 8 x 8"):
        load_mask((str(tmp_path / "000.png"), str(tmp_path / "001.png")), 8, "nonzero")


def test_autovi_reads_a_mask_folder_per_image(tmp_path, source):
    root = make_loco(tmp_path, source, mask_names=("0000.png",),
                     kinds={"hole": "missing", "scratch": "missing", "stain": "misplaced"})
    category = load_category("autovi", root, "fabric")
    assert len(category.samples) == 24 and sum(s.label for s in category.samples) == 12
    assert all(Path(s.mask_path[0]).relative_to(root).as_posix()
               == f"fabric/ground_truth/{s.defect_type}/{Path(s.name).stem}/0000.png"
               for s in category.samples if s.label)


# --- MPDD --------------------------------------------------------------------------------------

def test_mpdd_masks_with_or_without_the_mask_suffix(tmp_path, source):
    root = make_mpdd(tmp_path, source)
    category = load_category("mpdd", root, "bracket_black")
    anomalous = [s for s in category.samples if s.label]
    assert len(anomalous) == 12 and all(s.mask_path for s in anomalous)
    assert {Path(s.mask_path).name.endswith("_mask.png") for s in anomalous} == {True, False}
    assert category.mask_rule == "truncate"  # read as MVTec AD is
    stray = root / "bracket_black/ground_truth/hole/017.png"
    shutil.copyfile(anomalous[0].mask_path, stray)
    with pytest.raises(DatasetError, match=r"hole/017\.png: a mask for no image"):
        load_category("mpdd", root, "bracket_black")


# --- Real-IAD ----------------------------------------------------------------------------------

@pytest.mark.parametrize("with_json", [True, False])
def test_real_iad_views_are_categories(tmp_path, source, with_json):
    root = make_real_iad(tmp_path, source, with_json)
    assert list_categories("real_iad", root) == ["fabric_C1", "fabric_C2"]
    if with_json:
        c1 = load_category("real_iad", root, "fabric_C1")
    else:
        with pytest.warns(UserWarning, match="no split file realiad_jsons/fabric.json"):
            c1 = load_category("real_iad", root, "fabric_C1")
    assert len(c1.samples) == 12 and all("_C1_" in Path(s.path).name for s in c1.samples)
    assert [s.label for s in c1.samples] == [1] * 6 + [0] * 6
    assert all(s.mask_path == s.path[:-4] + ".png" for s in c1.samples if s.label)
    assert all(s.mask_path is None for s in c1.samples if not s.label)
    c2 = load_category("real_iad", root, "fabric_C2")
    assert not {s.path for s in c1.samples} & {s.path for s in c2.samples}
    # subsets stratify by defect type, not by each part's own folder
    parts = subsets(subset_groups(c1.samples), 2, seed=0)
    assert sorted(len(p) for p in parts) == [6, 6]


def test_real_iad_json_limits_the_images_to_its_test_split(tmp_path, source):
    root = make_real_iad(tmp_path, source)
    split = root / "realiad_jsons" / "fabric.json"
    data = json.loads(split.read_text())
    data["train"], data["test"] = data["test"][:4], data["test"][4:]
    split.write_text(json.dumps(data))
    assert len(load_category("real_iad", root, "fabric_C1").samples) == 10
    data["test"].append({"anomaly_class": "OK", "image_path": "OK/S9999/fabric_9999_OK_C1_1.jpg", "mask_path": None})
    split.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"fabric\.json: lists .*S9999/fabric_9999_OK_C1_1\.jpg, which does not exist"):
        load_category("real_iad", root, "fabric_C1")


@pytest.mark.filterwarnings("ignore:.*no split file:UserWarning")
def test_real_iad_bad_names_and_layouts(tmp_path, source):
    root = make_real_iad(tmp_path, source, with_json=False)
    with pytest.raises(DatasetError, match=r"category 'fabric': Real-IAD categories are one camera view each"):
        load_category("real_iad", root, "fabric")
    image = next((root / "fabric/NG").rglob("*_C1_*.jpg"))
    shutil.copyfile(image.with_suffix(".png"), image.with_name(image.stem + "_mask.png"))
    with pytest.raises(DatasetError, match=rf"{image.name}: two masks"):
        load_category("real_iad", root, "fabric_C1")
    image.unlink()
    image.with_suffix(".png").unlink()
    with pytest.raises(DatasetError, match=rf"{image.stem}_mask\.png: a mask for no image"):
        load_category("real_iad", root, "fabric_C1")


def test_real_iad_ok_in_any_case_is_normal(tmp_path, source):
    root = make_real_iad(tmp_path, source)
    split = root / "realiad_jsons" / "fabric.json"
    data = json.loads(split.read_text())
    for number, entry in enumerate(e for e in data["test"] if e["anomaly_class"] == "OK"):
        entry["anomaly_class"] = ("ok", "Ok", "OK")[number % 3]
    split.write_text(json.dumps(data))
    c1 = load_category("real_iad", root, "fabric_C1")
    assert [s.label for s in c1.samples] == [1] * 6 + [0] * 6
    assert [s.defect_type for s in c1.samples][6:] == ["OK"] * 6  # one group for subsets, whatever the case


def test_real_iad_without_its_split_file_says_so_once_naming_it(tmp_path, source):
    root = make_real_iad(tmp_path, source, with_json=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for view in ("fabric_C1", "fabric_C2", "fabric_C1"):
            load_category("real_iad", root, view)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"looked for {root / 'realiad_jsons' / 'fabric.json'}" in message
    assert "labelled by their folders (OK: normal)" in message


# --- KolektorSDD ---------------------------------------------------------------------------------

def test_kolektor_is_one_category_a_non_empty_label_is_a_defect(tmp_path, source):
    root = make_kolektor(tmp_path / "KolektorSDD", source)
    assert list_categories("kolektor", root) == ["KolektorSDD"]
    category = load_category("kolektor", root)
    assert category.name == "KolektorSDD" and len(category.samples) == 24
    assert category.samples[0].name == "kos01/Part0.jpg"
    assert sum(s.label for s in category.samples) == 12
    for sample in category.samples:
        label = np.asarray(Image.open(Path(sample.path).with_name(Path(sample.path).stem + "_label.bmp")))
        assert sample.label == int(label.any()) and (sample.mask_path is not None) == bool(label.any())
    with pytest.raises(DatasetError, match="KolektorSDD is one category"):
        load_category("kolektor", root, "kos01")
    (root / "kos02/Part3_label.bmp").unlink()
    with pytest.raises(DatasetError, match=r"kos02/Part3\.jpg: no label Part3_label\.bmp"):
        load_category("kolektor", root)
    (root / "kos02/Part3.jpg").unlink()
    shutil.copyfile(root / "kos01/Part0_label.bmp", root / "kos01/Part7_label.bmp")
    with pytest.raises(DatasetError, match=r"kos01/Part7_label\.bmp: a label for no image"):
        load_category("kolektor", root)


# --- a plain folder ------------------------------------------------------------------------------

def test_folder_masks_follow_the_image_path(tmp_path, source):
    """cam2/bad_000.png takes masks/cam2/bad_000.png, not the mask of the top-level bad_000.png."""
    _, defects = source
    for folder, (_, image, mask) in (("", defects[0]), ("cam2/", defects[5])):
        copy(image, tmp_path / f"{folder}bad_000.png")
        copy(mask, tmp_path / f"masks/{folder}bad_000.png")
    copy(defects[1][1], tmp_path / "cam3/other.png")  # a unique name: masks/ need not mirror cam3/
    copy(defects[1][2], tmp_path / "masks/other_mask.png")
    samples = {s.name: s for s in load_category("folder", tmp_path).samples}
    assert {name: Path(s.mask_path).relative_to(tmp_path).as_posix() for name, s in samples.items()} == {
        "bad_000.png": "masks/bad_000.png", "cam2/bad_000.png": "masks/cam2/bad_000.png",
        "cam3/other.png": "masks/other_mask.png"}


def test_folder_mask_found_by_a_shared_name_alone_is_refused(tmp_path, source):
    _, defects = source
    copy(defects[0][1], tmp_path / "bad_000.png")
    copy(defects[1][1], tmp_path / "cam2/bad_000.png")
    copy(defects[0][2], tmp_path / "masks/bad_000.png")
    with pytest.raises(DatasetError, match=r"masks/bad_000\.png: the mask of bad_000\.png or of cam2/bad_000\.png\? "
                                           r"Masks follow the image's path below the root \(masks/cam2/bad_000\.png"):
        load_category("folder", tmp_path)
    (tmp_path / "masks/cam2").mkdir()  # masks/ mirrors cam2/: its image has no mask, unambiguously
    samples = {s.name: s.mask_path for s in load_category("folder", tmp_path).samples}
    assert samples["cam2/bad_000.png"] is None and samples["bad_000.png"].endswith("masks/bad_000.png")


# --- shared behaviour --------------------------------------------------------------------------

def test_new_layouts_never_list_the_artifacts_folder(tmp_path, source):
    root = make_real_iad(tmp_path, source)
    artifacts = root / "fabric" / "OK" / "artifacts"
    copy(next((root / "fabric/OK").rglob("*_C1_*.jpg")), artifacts / "x" / "fabric_7777_OK_C1_1.jpg")
    assert len(load_category("real_iad", root, "fabric_C1", exclude=[artifacts]).samples) == 12
    loco = make_loco(tmp_path / "loco", source)
    copy(source[0][0], loco / "fabric/artifacts/test/good/000.png")
    assert list_categories("mvtec_loco", loco, exclude=[loco / "fabric/artifacts"]) == ["fabric"]


def test_new_layouts_refuse_links_out_of_the_root(tmp_path, source):
    root = make_kolektor(tmp_path / "KolektorSDD", source)
    outside = copy(source[0][0], tmp_path / "outside.jpg", "L")
    (root / "kos01/Part0.jpg").unlink()
    (root / "kos01/Part0.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        load_category("kolektor", root)


# an artifacts folder (marked as ours) inside a folder of images, per layout: (maker, category, the
# folders it is put in, relative to the root); what lies beside it is listed, nothing inside it
ARTIFACTS_INSIDE = {
    "mvtec_ad": (make_mvtec, "fabric", ["fabric/test/good", "fabric/test", "fabric/ground_truth/hole"]),
    "btad": (make_btad, "03", ["03/test/ok", "03/test", "03/ground_truth/ko"]),
    "mpdd": (make_mpdd, "bracket_black", ["bracket_black/test/good", "bracket_black/test",
                                          "bracket_black/ground_truth/hole"]),
    "mvtec_ad2": (make_ad2, "fabric", ["fabric/test_public/good", "fabric/test_public",
                                       "fabric/test_public/ground_truth/bad"]),
    "mvtec_loco": (make_loco, "fabric", ["fabric/test/good", "fabric/test", "fabric/ground_truth/logical_anomalies"]),
    "autovi": (lambda root, source: make_loco(root, source, ("0000.png",)), "fabric",
               ["fabric/test/good", "fabric/test", "fabric/ground_truth/logical_anomalies"]),
    "visa": (make_visa, "candle", ["candle/Data/Images/Normal", "candle/Data/Masks/Anomaly"]),
    "real_iad": (lambda root, source: make_real_iad(root, source, with_json=False), "fabric_C1",
                 ["fabric/OK/S0000", "fabric/OK", "fabric/NG", "fabric/NG/HOLE/S0100"]),
    "kolektor": (make_kolektor, None, ["kos01", "."]),
    "folder": (make_folder, None, ["good", "masks/bad", "."]),
}


@pytest.mark.parametrize("dataset", list(ARTIFACTS_INSIDE))
def test_an_artifacts_folder_inside_an_image_folder_drops_no_image_whatever_the_layout(tmp_path, source, dataset):
    maker, category, places = ARTIFACTS_INSIDE[dataset]
    root = maker(tmp_path / "data", source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Real-IAD without its split file says so
        before = load_category(dataset, root, category)
    assert before.samples
    artifacts = []
    for place in places:  # each holding what the layout would take in: an image, its mask or label
        folder = store.mark_artifacts_root(root / place / "musc_out")
        for sample in before.samples[:: max(1, len(before.samples) // 3)]:
            for path in [sample.path] + ([sample.mask_path] if isinstance(sample.mask_path, str) else []):
                shutil.copyfile(path, folder / Path(path).name)
                copy(Path(path), folder / "good" / Path(path).name)
        artifacts.append(folder)
    for exclude in (artifacts, []):  # given as the run's artifacts root, or only marked
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            after = load_category(dataset, root, category, exclude=exclude)
        assert after.samples == before.samples
        if category:
            assert list_categories(dataset, root, exclude=exclude) == list_categories(dataset, root)


# --- end to end ----------------------------------------------------------------------------------

LAYOUTS = {  # dataset: (maker, category, pixel metrics expected)
    "mvtec_ad2": (make_ad2, "fabric", True),
    "mvtec_ad2 private": (make_ad2, "fabric_private", False),
    "mvtec_loco": (make_loco, "fabric", True),
    "mpdd": (make_mpdd, "bracket_black", True),
    "real_iad": (make_real_iad, "fabric_C1", True),
    "kolektor": (make_kolektor, "data", True),
    "autovi": (lambda root, source: make_loco(root, source, ("0000.png",)), "fabric", True),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_end_to_end(prefect_harness, tmp_path, source, layout):
    from flows import category_flow
    maker, category, evaluated = LAYOUTS[layout]
    dataset = layout.split()[0]
    root = maker(tmp_path / "data", source)
    result = category_flow(dataset, str(root), category, dict(TINY_CONFIG), str(tmp_path / "artifacts"))
    metrics = result["metrics"]
    table = pd.read_csv(Path(result["outputs"]) / "metrics.csv", keep_default_na=False)
    assert table.loc[0, "mask_binarisation"] == registered(dataset).mask_rule
    if evaluated:
        for name in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            assert metrics[name] is not None and 0.0 <= metrics[name] <= 1.0, name
        assert metrics["pixel_auroc"] > 0.6  # the synthetic defects are found, whatever the layout
        assert table.loc[0, "not_computed"] == ""
    else:
        assert all(metrics[name] is None for name in ("image_auroc", "pixel_auroc", "pixel_aupro"))
        assert "labels unknown" in table.loc[0, "not_computed"]
        assert "no ground-truth masks" in table.loc[0, "not_computed"]
    per_image = pd.read_csv(Path(result["outputs"]) / "per_image.csv")
    assert len(per_image) == len(load_category(dataset, root, category).samples)
