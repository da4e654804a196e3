"""Every picture read as a person sees it and every mask as its dataset means it: the same picture
stored as 8-bit PNG and in each other format (12-bit data in 16 bits, 16-bit colour, float TIFF,
EXIF-turned, palette, alpha, CMYK) reads the same; masks as label images, in alpha, in colour, as
JPEG; what cannot be read faithfully is refused in one line naming the file."""
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import png
import pytest
import tifffile
from PIL import Image

from conftest import RUN_FLAGS, run_musc
from musc.errors import DatasetError
from musc.inputs.images import UnreadableImage, load_image, load_mask

RNG = np.random.default_rng(5)
PICTURE = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # a landscape picture: turns show
GREY = PICTURE[..., 0]
MASK = np.zeros((12, 20), np.uint8)
MASK[3:8, 5:14] = 255

# what a viewer does to the stored pixels for each EXIF orientation (the EXIF 2.3 table), and so the
# stored pixels of an upright picture are its inverse
SHOWN = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
STORED = {**SHOWN, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def exif(orientation):
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def stored(image: Image.Image, orientation: int) -> Image.Image:
    return image if STORED[orientation] is None else image.transpose(STORED[orientation])


def write_png16(path, samples, bitdepth=16):
    """A 16-bit PNG (grey, grey+alpha, colour or colour+alpha by the last axis) through pypng."""
    samples = np.asarray(samples, dtype=np.uint16)
    planes = 1 if samples.ndim == 2 else samples.shape[2]
    writer = png.Writer(samples.shape[1], samples.shape[0], greyscale=planes in (1, 2), alpha=planes in (2, 4),
                        bitdepth=bitdepth)
    with open(path, "wb") as handle:
        writer.write(handle, samples.reshape(samples.shape[0], -1).tolist())
    return Path(path)

def add_exif(path: Path, orientation: int) -> None:
    """Put an eXIf chunk (PNG 1.5) before the image data of a PNG written without one."""
    chunk = exif(orientation)
    body = b"eXIf" + chunk
    blob = path.read_bytes()
    end = blob.index(b"IDAT") - 4
    path.write_bytes(blob[:end] + struct.pack(">I", len(chunk)) + body + struct.pack(">I", zlib.crc32(body))
                     + blob[end:])


def twelve_bit(levels):
    """8-bit levels as a 12-bit camera would give them (every level read back exactly)."""
    return np.round(levels.astype(np.float64) * 4095 / 255).astype(np.uint16)


def same(path, expected, tolerance=0):
    got = np.asarray(load_image(path), dtype=np.int16)
    expected = np.asarray(expected, dtype=np.int16)
    if expected.ndim == 2:
        expected = np.repeat(expected[..., None], 3, axis=2)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.abs(got - expected).max() <= tolerance, np.abs(got - expected).max()


# Pictures --------------------------------------------------------------------------------------------

def test_twelve_bit_camera_data_in_a_16_bit_png_reads_as_its_8_bit_picture(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(twelve_bit(GREY)).save(path)
    assert Image.open(path).mode == "I;16"
    with pytest.warns(UserWarning, match=r"frame.png: its values use 12 of its 16 bits; read as 12-bit"):
        same(path, GREY)


@pytest.mark.parametrize("bits", [10, 14, 16])
def test_deep_grey_pngs_read_by_the_range_their_data_uses(tmp_path, bits):
    top = 2 ** bits - 1
    data = np.round(GREY.astype(np.float64) * top / 255).astype(np.uint16)
    data[0, 0] = top  # the picture reaches its depth's top
    path = tmp_path / f"frame{bits}.png"
    Image.fromarray(data).save(path)
    expected = GREY.copy()
    expected[0, 0] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same(path, expected)


def test_a_16_bit_colour_png_is_read_whole_not_by_its_high_byte(tmp_path):
    path = write_png16(tmp_path / "colour.png", twelve_bit(PICTURE))
    assert np.asarray(Image.open(path)).max() <= 16  # what Pillow alone gives: 16 levels of grey at most
    with pytest.warns(UserWarning, match="12 of its 16 bits"):
        same(path, PICTURE)


def test_a_16_bit_colour_png_with_alpha_drops_an_opaque_alpha(tmp_path):
    full = np.round(PICTURE.astype(np.float64) * 65535 / 255).astype(np.uint16)
    samples = np.concatenate([full, np.full((12, 20, 1), 65535, np.uint16)], axis=2)
    same(write_png16(tmp_path / "rgba16.png", samples), PICTURE)


@pytest.mark.parametrize("channels", [1, 3])
def test_float_tiffs_in_0_to_1_read_as_their_8_bit_picture(tmp_path, channels):
    levels = GREY if channels == 1 else PICTURE
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, levels.astype(np.float32) / 255)
    same(path, levels)


def test_a_16_bit_colour_tiff_is_read_whole(tmp_path):
    path = tmp_path / "colour16.tif"
    tifffile.imwrite(path, np.round(PICTURE.astype(np.float64) * 65535 / 255).astype(np.uint16))
    same(path, PICTURE)


@pytest.mark.parametrize("value, reason", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                           (-0.5, "negative values")])
def test_a_float_picture_without_a_faithful_reading_is_refused_naming_the_file(tmp_path, value, reason):
    data = GREY.astype(np.float32) / 255
    data[2, 2] = value
    tifffile.imwrite(tmp_path / "odd.tif", data)
    with pytest.raises(UnreadableImage, match=rf"odd.tif: image holds {reason}"):
        load_image(tmp_path / "odd.tif")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_upright(tmp_path, orientation):
    upright = Image.fromarray(PICTURE)
    path = tmp_path / "turned.png"
    stored(upright, orientation).save(path, exif=exif(orientation))
    same(path, PICTURE)
    assert load_image(path).size == (20, 12)


def test_a_jpeg_stored_turned_reads_upright(tmp_path):
    """What a phone or a line camera mounted on its side writes: the sensor's pixels and orientation 6."""
    yy, xx = np.mgrid[0:48, 0:80]
    smooth = np.dstack([xx * 3, yy * 5, np.where(xx < 20, 200, 40)]).astype(np.uint8)  # asymmetric both ways
    path = tmp_path / "phone.jpg"
    stored(Image.fromarray(smooth), 6).save(path, quality=100, subsampling=0, exif=exif(6))
    assert Image.open(path).size == (48, 80)
    same(path, smooth, tolerance=12)  # JPEG's loss at the edges; the turn is what is checked


@pytest.mark.parametrize("orientation", range(2, 9))
def test_deep_pictures_turn_as_8_bit_ones(tmp_path, orientation):
    """A 16-bit colour PNG (read by pypng, turned by our code) stored turned with its eXIf tag."""
    turned = np.asarray(stored(Image.fromarray(PICTURE), orientation))
    path = write_png16(tmp_path / "turned16.png", np.round(turned.astype(np.float64) * 65535 / 255))
    add_exif(path, orientation)
    same(path, PICTURE)


def test_palette_grey_alpha_and_cmyk_pictures_read_as_shown(tmp_path):
    quantised = Image.fromarray(PICTURE).quantize(64)
    quantised.save(tmp_path / "palette.png")
    same(tmp_path / "palette.png", np.asarray(quantised.convert("RGB")))
    Image.fromarray(GREY).save(tmp_path / "grey.png")
    same(tmp_path / "grey.png", GREY)
    Image.fromarray(np.dstack([PICTURE, np.full((12, 20), 255, np.uint8)])).save(tmp_path / "opaque.png")
    same(tmp_path / "opaque.png", PICTURE)
    Image.fromarray(np.dstack([GREY, np.full((12, 20), 255, np.uint8)]), mode="LA").save(tmp_path / "la.png")
    same(tmp_path / "la.png", GREY)
    cmyk = Image.new("CMYK", (20, 12), (0, 255, 255, 0))  # pure red in print colours
    cmyk.save(tmp_path / "print.jpg", quality=100)
    red = np.asarray(load_image(tmp_path / "print.jpg"), dtype=np.int16)
    assert (np.abs(red - np.array([255, 0, 0])) <= 3).all()


def test_transparent_pixels_are_composited_over_black_and_said(tmp_path):
    alpha = np.full((12, 20), 255, np.uint8)
    alpha[:, :10] = 0
    Image.fromarray(np.dstack([PICTURE, alpha])).save(tmp_path / "cut.png")
    expected = PICTURE.copy()
    expected[:, :10] = 0
    with pytest.warns(UserWarning, match="cut.png: image with transparent pixels, composited over black"):
        same(tmp_path / "cut.png", expected)


# Masks -----------------------------------------------------------------------------------------------

def as_read(path, rule="truncate", size=(12, 20)):
    return load_mask(path, size, rule)


EXPECTED_MASK = (MASK > 0).astype(np.uint8)


@pytest.mark.parametrize("rule", ["truncate", "nonzero"])
def test_label_images_in_8_and_16_bits_are_their_masks(tmp_path, rule):
    Image.fromarray((MASK > 0).astype(np.uint16)).save(tmp_path / "label16.png")
    Image.fromarray((MASK > 0).astype(np.uint8)).save(tmp_path / "label8.png")
    Image.fromarray((MASK > 0).astype(np.uint16) * 65535).save(tmp_path / "full16.png")
    Image.fromarray((MASK > 0).astype(np.uint16) * 4095).save(tmp_path / "twelve.png")
    tifffile.imwrite(tmp_path / "float.tif", (MASK > 0).astype(np.float32))
    for name in ("label16.png", "label8.png", "full16.png", "twelve.png", "float.tif"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a clear binary mask says nothing
            np.testing.assert_array_equal(as_read(tmp_path / name, rule), EXPECTED_MASK, err_msg=name)


def test_a_mask_in_the_alpha_channel_and_a_coloured_mark_are_read(tmp_path):
    ink = np.zeros((12, 20, 4), np.uint8)
    ink[..., 3] = MASK  # black ink, the mark in alpha (what annotation tools export)
    Image.fromarray(ink, mode="RGBA").save(tmp_path / "alpha.png")
    red = np.zeros((12, 20, 3), np.uint8)
    red[..., 0] = MASK  # a red mark on black
    Image.fromarray(red).save(tmp_path / "red.png")
    overlay = np.zeros((12, 20, 4), np.uint8)
    overlay[..., 0], overlay[..., 3] = 255, MASK  # red everywhere, visible only where marked
    Image.fromarray(overlay, mode="RGBA").save(tmp_path / "overlay.png")
    Image.fromarray(MASK).convert("1").save(tmp_path / "bilevel.png")
    for name in ("alpha.png", "red.png", "overlay.png", "bilevel.png"):
        np.testing.assert_array_equal(as_read(tmp_path / name), EXPECTED_MASK, err_msg=name)


def test_a_jpeg_mask_is_thresholded_at_half_range_and_said_once_per_folder(tmp_path):
    big = np.zeros((120, 200), np.uint8)
    big[30:80, 50:140] = 255
    for index in range(2):
        Image.fromarray(big).save(tmp_path / f"m{index}.jpg", quality=75)
    with pytest.warns(UserWarning, match="JPEG masks are lossy; thresholded at half range") as said:
        masks = [load_mask(tmp_path / f"m{index}.jpg", (120, 200), "truncate") for index in range(2)]
    assert sum("JPEG masks" in str(w.message) for w in said) == 1
    for mask in masks:  # the defect as drawn, not half of it (truncation) nor grown (non-zero)
        assert abs(int(mask.sum()) - 50 * 90) <= 50 * 90 * 0.02
        assert mask[30:80, 50:140].mean() > 0.98 and mask[:25].sum() == 0


def test_a_mask_turned_otherwise_than_its_image_is_refused_naming_both_sizes(tmp_path):
    Image.fromarray(MASK.T.copy()).save(tmp_path / "tall.png")
    with pytest.raises(DatasetError, match=r"tall.png: mask of 12 x 20 pixels, but its image, upright, is 20 x 12 "
                                           r"\(turned"):
        load_mask(tmp_path / "tall.png", 8, "truncate", picture_size=(20, 12))
    load_mask(tmp_path / "tall.png", 8, "truncate", picture_size=(24, 40))  # the same shape at another scale


def test_an_exif_turned_mask_is_read_upright_like_its_image(tmp_path):
    stored(Image.fromarray(MASK), 6).save(tmp_path / "mask.png", exif=exif(6))
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png", (12, 20), "truncate", picture_size=(20, 12)),
                                  EXPECTED_MASK)


# Through musc run -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_dataset_in_deep_turned_and_label_formats_gives_the_8_bit_pngs_metrics(tiny_dataset, tmp_path):
    """The tiny dataset as 8-bit PNGs, and the same pictures as a 12-bit camera with its mounting
    would store them (16-bit PNGs of 12-bit data, every other one stored turned with its EXIF tag)
    with 16-bit 0/1 label masks: ``musc run`` gives the same metrics and the same per-image scores."""
    source = Path(tiny_dataset) / "fabric"
    converted = tmp_path / "deep" / "fabric"
    for index, image in enumerate(sorted(source.rglob("*.png"))):
        target = converted / image.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        levels = np.asarray(Image.open(image))
        if "ground_truth" in image.parts:
            Image.fromarray((levels > 0).astype(np.uint16)).save(target)
            continue
        orientation = 6 if index % 2 else 1
        add_exif(write_png16(target, twelve_bit(np.asarray(stored(Image.fromarray(levels), orientation)))),
                 orientation)
    outputs = {}
    for name, root in (("8-bit", Path(tiny_dataset)), ("deep", tmp_path / "deep")):
        result = run_musc("run", "--dataset", "mvtec_ad", "--root", root, "--category", "fabric", *RUN_FLAGS,
                          "--artifacts", tmp_path / f"artifacts-{name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        csv = next((tmp_path / f"artifacts-{name}").rglob("metrics.csv"))
        per_image = pd.read_csv(csv.with_name("per_image.csv"))
        outputs[name] = (pd.read_csv(csv), per_image.sort_values(per_image.columns[0]).reset_index(drop=True))
    metrics = ["image_auroc", "pixel_auroc", "pixel_aupro"]
    pd.testing.assert_frame_equal(outputs["8-bit"][0][metrics], outputs["deep"][0][metrics])
    score = [c for c in outputs["deep"][1].columns if "score" in c][0]
    np.testing.assert_allclose(outputs["8-bit"][1][score], outputs["deep"][1][score], rtol=0, atol=1e-6)

