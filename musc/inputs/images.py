"""Pictures and masks read as files: one reader for every image (an 8-bit RGB picture) and one for
every ground-truth mask (binary, at a size, by the dataset's rule: docs/METHOD.md 1.3), each
refusing from its header what is too large, and naming the file when it cannot be read."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError, MuscError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Images (and masks) above this many pixels are refused from their header, before decoding
# (Pillow's own guard only starts at about 179 megapixels). MUSC_MAX_IMAGE_PIXELS overrides it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


class UnreadableImage(MuscError, OSError):
    """An image file that cannot be decoded."""


class ImageSettingError(MuscError, ValueError):
    """An environment setting of the image reader is invalid (MUSC_MAX_IMAGE_PIXELS)."""


def images_in(folder: Path) -> list[Path]:
    """The image files of a folder (not below it), in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images scaled to 8 bits (PIL's convert would clip them)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def max_image_pixels() -> int:
    """The pixel limit for images and masks (MUSC_MAX_IMAGE_PIXELS, default 100 megapixels)."""
    value = os.environ.get("MUSC_MAX_IMAGE_PIXELS", "")
    try:
        return int(value) if value.strip() else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise ImageSettingError(f"MUSC_MAX_IMAGE_PIXELS: expected a number of pixels, got {value!r}") from None


def open_checked(path: str | Path, what: str, data: bytes | None = None) -> Image.Image:
    """Decode an image or mask after checking its size from the header: UnreadableImage (naming the
    file) when it cannot be read or is above the pixel limit. ``data``: the file's bytes, already
    read (then ``path`` only names it)."""
    limit = max_image_pixels()
    source = io.BytesIO(data) if data is not None else path
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > limit:
                raise UnreadableImage(f"{path}: {what} of {width} x {height} pixels is above the limit of "
                                      f"{limit / 1e6:g} megapixels (MUSC_MAX_IMAGE_PIXELS)")
            image.load()
            converted = _to_8bit(image)
            return converted.copy() if converted is image else converted  # usable once the file is closed
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:  # Pillow refuses from the header already (above ~179 megapixels)
        raise UnreadableImage(f"{path}: {what} of more than {limit / 1e6:g} megapixels is above the limit "
                              f"(MUSC_MAX_IMAGE_PIXELS)") from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = reason.replace(repr(source), repr(str(path)))  # the file's name, not the buffer it was read into
        raise UnreadableImage(f"{path}: unreadable {what} ({reason})") from None


def combined_mask(paths: Sequence[str | Path]) -> Image.Image:
    """Several masks of one image as one (MVTec LOCO, AutoVI: a file per defect region): a pixel
    non-zero in any of them is defective (255), else 0."""
    union, first = None, None
    for path in paths:
        part = np.asarray(open_checked(path, "mask").convert("L")) > 0
        if union is None:
            union, first = part, path
        elif part.shape != union.shape:
            raise DatasetError(f"{path}: mask of {part.shape[1]} x {part.shape[0]} pixels, but {first} of the "
                               f"same image has {union.shape[1]} x {union.shape[0]}")
        else:
            union |= part
    if union is None:
        raise DatasetError("mask: an empty list of mask files")
    return Image.fromarray(union.astype(np.uint8) * 255, mode="L")


def load_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """An image as 8-bit RGB. UnreadableImage (one line, naming the file) when it cannot be decoded
    or is too large. ``data``: the file's bytes, already read (decoded from them; ``path`` names them)."""
    return open_checked(path, "image", data).convert("RGB")


def load_mask(path: str | Path | Sequence[str | Path] | None, image_size: int | tuple[int, int], rule: str
              ) -> np.ndarray:
    """A ground-truth mask as (S, S) uint8 {0, 1}, binarised per dataset (docs/METHOD.md 1.3).
    ``path``: a mask file, or several masks of one image (combined: non-zero in any is defective).
    ``image_size``: S, or (height, width) (tiled runs: the image's full resolution)."""
    height, width = (image_size, image_size) if np.ndim(image_size) == 0 else (int(n) for n in image_size)
    if path is None:
        return np.zeros((height, width), dtype=np.uint8)
    mask = open_checked(path, "mask") if isinstance(path, (str, Path)) else combined_mask(path)
    if mask.mode == "1":  # PIL resizes mode-1 masks with nearest neighbour, as the reference would
        resized = np.asarray(mask.resize((width, height), Image.NEAREST), dtype=np.uint8)
        return (resized > 0).astype(np.uint8)
    mask = mask.convert("L")
    peak = int(np.asarray(mask).max())
    if 0 < peak < 255:
        if rule == "truncate":  # under "nonzero" these pixels count anyway: nothing to say
            warnings.warn(f"{path}: mask values reach only {peak}, not 255; treating every non-zero pixel "
                          f"as defective", stacklevel=2)
        mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    resized = np.asarray(mask.resize((width, height), Image.BILINEAR))
    binary = resized == 255 if rule == "truncate" else resized > 0
    return binary.astype(np.uint8)
