"""Pictures and masks read as files, as a person sees them: one reader for every image (an 8-bit RGB
picture) and one for every ground-truth mask (binary, at a size, by the dataset's rule:
docs/METHOD.md 1.3). Both apply the EXIF orientation (every viewer and annotation tool shows the
picture turned), read deep images by the range their data really uses (12-bit camera data in a
16-bit file, 16-bit, float in 0..1), flatten palette, grey, CMYK and alpha, refuse from the header
what is too large, and refuse in one line naming the file what they cannot read faithfully.
docs/LAYOUTS.md ("Image and mask formats") lists what each format gives."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import DatasetError, MuscError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Images (and masks) above this many pixels are refused from their header, before decoding
# (Pillow's own guard only starts at about 179 megapixels). MUSC_MAX_IMAGE_PIXELS overrides it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
# The bit depths deep data is read at: the smallest that holds the picture's largest value (a
# 12-bit camera's frame in a 16-bit file is scaled by 4095, not 65535).
DATA_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
ORIENTATION = 0x0112  # the EXIF tag


class UnreadableImage(MuscError, OSError):
    """An image file that cannot be decoded, or not faithfully."""


class ImageSettingError(MuscError, ValueError):
    """An environment setting of the image reader is invalid (MUSC_MAX_IMAGE_PIXELS)."""


def images_in(folder: Path) -> list[Path]:
    """The image files of a folder (not below it), in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def max_image_pixels() -> int:
    """The pixel limit for images and masks (MUSC_MAX_IMAGE_PIXELS, default 100 megapixels)."""
    value = os.environ.get("MUSC_MAX_IMAGE_PIXELS", "")
    try:
        return int(value) if value.strip() else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise ImageSettingError(f"MUSC_MAX_IMAGE_PIXELS: expected a number of pixels, got {value!r}") from None


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per kind of finding and folder (a thousand JPEG masks say it once)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# Decoding ------------------------------------------------------------------------------------------

class Decoded:
    """A file as decoded, upright: ``image`` in one of Pillow's 8-bit modes, or ``samples`` (an
    array of deep data, with the number of colour channels in its last axis when it has one);
    ``format`` as Pillow names it (JPEG, PNG, TIFF...)."""

    def __init__(self, image: Image.Image | None, samples: np.ndarray | None, format: str | None):
        self.image, self.samples, self.format = image, samples, format

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size if self.image is not None else (self.samples.shape[1], self.samples.shape[0])


def _reason(error: BaseException, source, path) -> str:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return reason.replace(repr(source), repr(str(path)))  # the file's name, not the buffer it was read into


def _check_size(path, what: str, width: int, height: int) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise UnreadableImage(f"{path}: {what} of {width} x {height} pixels is above the limit of "
                              f"{limit / 1e6:g} megapixels (MUSC_MAX_IMAGE_PIXELS)")


def _oriented(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Deep samples turned as EXIF ``orientation`` says (Pillow does it for what it decodes)."""
    if orientation in (5, 6, 7, 8):
        samples = np.swapaxes(samples, 0, 1)  # transpose; then the flips of each case
        samples = {5: samples, 6: samples[:, ::-1], 7: samples[::-1, ::-1], 8: samples[::-1]}[orientation]
    else:
        samples = {2: samples[:, ::-1], 3: samples[::-1, ::-1], 4: samples[::-1]}.get(orientation, samples)
    return np.ascontiguousarray(samples)


def _deep_png(source, path) -> np.ndarray:
    """A 16-bit colour PNG (Pillow keeps only the high byte of each sample) read whole by pypng."""
    import png
    reader = png.Reader(bytes=source.getvalue()) if isinstance(source, io.BytesIO) else png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)


def _deep_tiff(source, path, what: str) -> tuple[np.ndarray, int]:
    """A TIFF Pillow cannot hold faithfully (16-bit or float colour) read by tifffile."""
    import tifffile
    try:
        with tifffile.TiffFile(source if isinstance(source, io.BytesIO) else str(path)) as tiff:
            page = tiff.pages[0]
            _check_size(path, what, page.imagewidth, page.imagelength)
            orientation = int(page.tags["Orientation"].value) if "Orientation" in page.tags else 1
            return page.asarray(), orientation
    except UnreadableImage:
        raise
    except Exception as error:  # tifffile's errors have no common base class
        raise UnreadableImage(f"{path}: unreadable {what} ({_reason(error, source, path)})") from None


def _is_deep_colour_png(image: Image.Image) -> bool:
    """A PNG of 16-bit colour samples (Pillow's raw mode for it: RGB;16B, RGBA;16B, LA;16B)."""
    if image.format != "PNG" or image.mode not in ("RGB", "RGBA", "LA") or not image.tile:
        return False
    args = image.tile[0].args
    return ";16" in (args if isinstance(args, str) else str(args[0]))


def decode(path: str | Path, what: str, data: bytes | None = None) -> Decoded:
    """Decode an image or mask, upright, after checking its size from the header: UnreadableImage
    (naming the file) when it cannot be read or is above the pixel limit. ``data``: the file's
    bytes, already read (then ``path`` only names it)."""
    limit = max_image_pixels()
    source = io.BytesIO(data) if data is not None else path
    try:
        with Image.open(source) as image:
            _check_size(path, what, *image.size)
            deep_png = _is_deep_colour_png(image)  # before reading EXIF, which may decode the file
            orientation = image.getexif().get(ORIENTATION, 1)
            if deep_png:
                return Decoded(None, _oriented(_deep_png(source, path), orientation), "PNG")
            if image.format == "TIFF" and image.mode in ("RGB", "RGBA") and max(
                    np.atleast_1d(image.tag_v2.get(258, 8))) > 8:
                samples, orientation = _deep_tiff(source, path, what)
                return Decoded(None, _oriented(samples, orientation), "TIFF")
            image.load()
            upright = ImageOps.exif_transpose(image)
            upright.format = image.format
            if upright.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return Decoded(None, np.asarray(upright), image.format)
            return Decoded(upright, None, image.format)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:  # Pillow refuses from the header already (above ~179 megapixels)
        raise UnreadableImage(f"{path}: {what} of more than {limit / 1e6:g} megapixels is above the limit "
                              f"(MUSC_MAX_IMAGE_PIXELS)") from None
    except Image.UnidentifiedImageError as error:
        if Path(path).suffix.lower() in (".tif", ".tiff"):  # float or deep colour TIFFs Pillow cannot open
            samples, orientation = _deep_tiff(io.BytesIO(data) if data is not None else path, path, what)
            return Decoded(None, _oriented(samples, orientation), "TIFF")
        raise UnreadableImage(f"{path}: unreadable {what} ({_reason(error, source, path)})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{path}: unreadable {what} ({_reason(error, source, path)})") from None


def data_top(path, samples: np.ndarray, what: str) -> float:
    """The value that is full white for deep ``samples``: 1 for float data in 0..1, else the top of
    the smallest bit depth that holds the largest value. Refuses what has no faithful reading."""
    if samples.dtype.kind == "f":
        if not np.isfinite(samples).all():
            raise UnreadableImage(f"{path}: {what} holds NaN or infinite values")
        if samples.size and samples.min() < 0:
            raise UnreadableImage(f"{path}: {what} holds negative values (min {samples.min():g}); "
                                  f"expected 0..1 or whole numbers of a bit depth")
        peak = float(samples.max()) if samples.size else 0.0
        if peak <= 1.0:
            return 1.0
    else:
        if samples.size and samples.min() < 0:
            raise UnreadableImage(f"{path}: {what} holds negative values (min {samples.min()})")
        peak = float(samples.max()) if samples.size else 0.0
    for bits in DATA_DEPTHS:
        if peak < 2 ** bits:
            return float(2 ** bits - 1)
    raise UnreadableImage(f"{path}: {what} values reach {peak:g}, beyond 32 bits")


def to_8bit(path, samples: np.ndarray, what: str) -> np.ndarray:
    """Deep samples as 8-bit levels, scaled by the range the data uses (``data_top``)."""
    top = data_top(path, samples, what)
    container = float(np.iinfo(samples.dtype).max) if samples.dtype.kind in "ui" else 1.0
    if samples.dtype.kind in "ui" and top < min(container, 2.0 ** 32 - 1):
        warn_once(f"depth:{Path(path).parent}:{top:g}",
                  f"{path}: its values use {int(np.log2(top + 1))} of its {samples.dtype.itemsize * 8} bits; "
                  f"read as {int(np.log2(top + 1))}-bit data (scaled by {top:g}), as are others like it in "
                  f"{Path(path).parent}")
    return np.clip(samples.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _without_alpha(path, image: Image.Image, what: str) -> Image.Image:
    """A picture with transparency as a person sees it: fully opaque alpha dropped; partly
    transparent pixels composited over black, said once per folder."""
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if alpha.min() < 255:
        warn_once(f"alpha:{Path(path).parent}",
                  f"{path}: {what} with transparent pixels, composited over black (as are others in "
                  f"{Path(path).parent})")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        rgba = Image.alpha_composite(black, rgba)
    return rgba.convert("RGB")


def open_checked(path: str | Path, what: str, data: bytes | None = None) -> Image.Image:
    """A picture as a person sees it, as 8-bit grey ("L") or colour ("RGB"), upright."""
    decoded = decode(path, what, data)
    if decoded.samples is not None:
        levels = to_8bit(path, decoded.samples, what)
        if levels.ndim == 3 and levels.shape[2] in (2, 4):  # grey or colour with alpha
            mode = "LA" if levels.shape[2] == 2 else "RGBA"
            return _without_alpha(path, Image.fromarray(levels, mode=mode), what)
        if levels.ndim == 3 and levels.shape[2] == 1:
            levels = levels[..., 0]
        if levels.ndim == 3 and levels.shape[2] != 3:
            raise UnreadableImage(f"{path}: {what} of {levels.shape[2]} channels; expected grey or colour")
        return Image.fromarray(levels, mode="L" if levels.ndim == 2 else "RGB")
    image = decoded.image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _without_alpha(path, image, what)
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGB")  # 1, CMYK (Pillow undoes Adobe's inverted JPEGs), YCbCr, LAB, HSV


def load_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """An image as 8-bit RGB, as a person sees it. UnreadableImage (one line, naming the file) when it
    cannot be decoded faithfully or is too large. ``data``: the file's bytes, already read."""
    return open_checked(path, "image", data).convert("RGB")


# Masks ---------------------------------------------------------------------------------------------

def mask_levels(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) uint8 levels (``read_mask``'s)."""
    return read_mask(path)[0]


def read_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """A mask file as (H, W) uint8 levels and whether the file is bilevel (mode "1": resized with
    nearest neighbour, as the reference's Pillow does for such files). The levels, upright: 0 normal, 255 defective, between only for the
    soft edges of an 8-bit or deep grey mask. A mask in the alpha channel (transparent = normal) is
    read there; a colour mask by its strongest channel (a red mark counts); a label image (0 and 1,
    or other small integers, in any depth) as non-zero = defective; a JPEG mask, lossy, thresholded
    at half range (said once per folder)."""
    decoded = decode(path, "mask")
    if decoded.samples is not None:
        samples = decoded.samples
        if samples.ndim == 3:
            samples = _mask_plane(path, samples)
        values = np.unique(samples)
        if samples.dtype.kind in "ui" and len(values) <= 2:  # binary: 0/1, 0/4095, 0/65535...
            return np.where(samples > 0, 255, 0).astype(np.uint8), False
        levels = to_8bit(path, samples, "mask")
    else:
        image = decoded.image
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("1", "L"):
            levels = np.asarray(image.convert("L"))
        else:
            levels = _mask_plane(path, np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")))
        values = np.unique(levels)
        if len(values) <= 2 and values.max() < 255:  # an 8-bit label image (0/1, or 0/n)
            levels = np.where(levels > 0, 255, 0).astype(np.uint8)
    if decoded.format == "JPEG":
        warn_once(f"jpeg:{Path(path).parent}",
                  f"{path}: JPEG masks are lossy; thresholded at half range (128), as are the other JPEG "
                  f"masks in {Path(path).parent}")
        levels = np.where(levels >= 128, 255, 0).astype(np.uint8)
    return levels, decoded.image is not None and decoded.image.mode == "1"


def _mask_plane(path, samples: np.ndarray) -> np.ndarray:
    """The plane that holds a multi-channel mask: the alpha channel where it varies (colour on a
    transparent ground), else the strongest colour channel."""
    channels = samples.shape[2]
    if channels in (2, 4):
        alpha = samples[..., -1]
        if alpha.min() != alpha.max():
            return alpha
        samples = samples[..., :-1]
    return samples.max(axis=2)


def combined_mask(paths: Sequence[str | Path]) -> np.ndarray:
    """Several masks of one image as one (MVTec LOCO, AutoVI: a file per defect region): a pixel
    defective in any of them is defective (255), else 0."""
    union, first = None, None
    for path in paths:
        part = mask_levels(path) > 0
        if union is None:
            union, first = part, path
        elif part.shape != union.shape:
            raise DatasetError(f"{path}: mask of {part.shape[1]} x {part.shape[0]} pixels, but {first} of the "
                               f"same image has {union.shape[1]} x {union.shape[0]}")
        else:
            union |= part
    if union is None:
        raise DatasetError("mask: an empty list of mask files")
    return union.astype(np.uint8) * 255


def check_mask_shape(path, levels: np.ndarray, picture_size: tuple[int, int] | None) -> None:
    """A mask whose shape is not its picture's (width, height) up to scale is refused: drawn on
    another picture, or on the picture turned otherwise (an EXIF orientation)."""
    if picture_size is None:
        return
    width, height = picture_size
    mask_height, mask_width = levels.shape[:2]
    if abs(mask_width / mask_height - width / height) > 0.01 * (width / height):
        turned = " (turned: check the EXIF orientation of both files)" if (mask_width, mask_height) == (
            height, width) else ""
        raise DatasetError(f"{path}: mask of {mask_width} x {mask_height} pixels, but its image, upright, is "
                           f"{width} x {height}{turned}")


def load_mask(path: str | Path | Sequence[str | Path] | None, image_size: int | tuple[int, int], rule: str,
              picture_size: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth mask as (S, S) uint8 {0, 1}, binarised per dataset (docs/METHOD.md 1.3).
    ``path``: a mask file, or several masks of one image (combined: defective in any is defective).
    ``image_size``: S, or (height, width) (tiled runs: the image's full resolution).
    ``picture_size``: the image's (width, height), upright, when known: a mask of another shape is
    refused (``check_mask_shape``)."""
    height, width = (image_size, image_size) if np.ndim(image_size) == 0 else (int(n) for n in image_size)
    if path is None:
        return np.zeros((height, width), dtype=np.uint8)
    levels, bilevel = read_mask(path) if isinstance(path, (str, Path)) else (combined_mask(path), False)
    check_mask_shape(path, levels, picture_size)
    if bilevel:
        resized = np.asarray(Image.fromarray(levels, mode="L").resize((width, height), Image.NEAREST))
        return (resized > 0).astype(np.uint8)
    peak = int(levels.max()) if levels.size else 0
    if 0 < peak < 255:
        if rule == "truncate":  # under "nonzero" these pixels count anyway: nothing to say
            warnings.warn(f"{path}: mask values reach only {peak}, not 255; treating every non-zero pixel "
                          f"as defective", stacklevel=2)
        levels = np.where(levels > 0, 255, 0).astype(np.uint8)
    resized = np.asarray(Image.fromarray(levels, mode="L").resize((width, height), Image.BILINEAR))
    binary = resized == 255 if rule == "truncate" else resized > 0
    return binary.astype(np.uint8)
