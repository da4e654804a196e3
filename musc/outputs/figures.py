"""Figures: per-image overlays of anomaly maps and gallery thumbnails, binary defect masks, score histograms, ROC/PR curves,
metric bar charts (PNG files)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inputs.images import UnreadableImage, load_image
from ..method.metrics import METRIC_NAMES, BinaryCurves, PixelCurves
from ..store.catalog import derived_name
from .evaluation import ANOMALOUS, NORMAL, SHORT_NAMES, Evaluation, EvaluationInputs, metric_text


def png_name(image_name: str) -> str:
    """'crack/000.png' -> 'crack__000-<8 hex>.png': one flat folder of per-image figures, named by
    the one rule for files derived from an input's name (``musc.store.catalog.derived_name``)."""
    return derived_name(image_name)


def save_binary_masks(folder: Path, inputs: EvaluationInputs, evaluation: Evaluation) -> list[str]:
    """One PNG per image: pixels whose map value reaches the evaluation's pixel threshold are white."""
    from PIL import Image
    written = []
    for name, anomaly_map in zip(inputs.names, inputs.maps):
        target = folder / png_name(name)
        Image.fromarray(((anomaly_map >= evaluation.pixel_threshold) * 255).astype(np.uint8), mode="L").save(target)
        written.append(str(target))
    return written


def new_figure(width: float, height: float):
    """A matplotlib figure of its own: no pyplot (its global state, its import), nothing to close."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


# Overlays are drawn with numpy and Pillow, not a matplotlib figure per image (about 20x faster).
RENDER_VERSION = "pil-4"  # part of each image's picture key: a change of the drawing redraws every picture
PANEL_MIN = 256           # smaller maps are enlarged to this many pixels per side for legibility
HEAT_ALPHA = 0.5          # the heat map's weight over the image
THUMB_PX = 96             # each panel (image, heat map) of a gallery thumbnail
# matplotlib's 'jet' colour map (its segment data), sampled once into 256 entries as imshow does
JET_SEGMENTS = {"red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
                "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
                "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}


@functools.lru_cache(maxsize=None)
def jet_lut() -> np.ndarray:
    """(256, 3) uint8: the 'jet' colours of the 256 bins imshow maps values to."""
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, *zip(*JET_SEGMENTS[name])) for name in ("red", "green", "blue")]
    return np.round(np.stack(channels, axis=1) * 255).astype(np.uint8)


def heat_colours(anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the map through the 'jet' table, scaled to [vmin, vmax] (default: its own range)."""
    values = np.asarray(anomaly_map, dtype=np.float64)
    low = float(values.min()) if vmin is None else float(vmin)
    high = float(values.max()) if vmax is None else float(vmax)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return jet_lut()[np.clip((np.nan_to_num(scaled) * 256).astype(np.int64), 0, 255)]


def contour(mask: np.ndarray) -> np.ndarray:
    """The outline of a ground-truth mask: its pixels with a 4-neighbour outside it (beyond the
    image's edge counts as inside, so a defect at the border is not framed by the border)."""
    inside = np.asarray(mask) > 0.5
    padded = np.pad(inside, 1, mode="edge")
    eroded = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~eroded


def overlay_panels(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None,
                   vmin: float | None = None, vmax: float | None = None, scale: int = 1):
    """The one drawing of an image with its anomaly map, which every picture is made of (the
    evaluate overlays and gallery thumbnails, the pool's maps): two Pillow images of the map's size
    times ``scale``, the image and the image under its heat map (scaled to [vmin, vmax], default its
    own range; weight ``HEAT_ALPHA``) with the ground-truth ``contour`` in white."""
    from PIL import Image
    height, width = anomaly_map.shape
    size = (width * scale, height * scale)
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    if picture.size != size:
        picture = picture.resize(size, Image.BILINEAR)
    heat = Image.fromarray(heat_colours(anomaly_map, vmin, vmax))
    if heat.size != size:
        heat = heat.resize(size, Image.BILINEAR)
    blended = np.asarray(Image.blend(picture, heat, HEAT_ALPHA)).copy()
    if mask is not None and np.any(mask):
        edge = contour(mask)
        blended[edge.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else edge] = 255
    return picture, Image.fromarray(blended)


@functools.lru_cache(maxsize=None)
def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def overlay_picture(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None,
                    vmin: float | None = None, vmax: float | None = None, title: str = ""):
    """A Pillow image: the ``overlay_panels`` (enlarged to at least ``PANEL_MIN`` pixels a side),
    a colour bar with its range, titles."""
    from PIL import Image, ImageDraw
    height, width = anomaly_map.shape
    scale = max(1, -(-PANEL_MIN // max(height, width)))
    picture, blended = overlay_panels(image, anomaly_map, mask, vmin, vmax, scale)
    size = picture.size
    low = float(anomaly_map.min()) if vmin is None else float(vmin)
    high = float(anomaly_map.max()) if vmax is None else float(vmax)
    gap, bar, labels, header = 8, 12, 56, 16
    canvas = Image.new("RGB", (2 * size[0] + 3 * gap + bar + labels, size[1] + header + gap), "white")
    canvas.paste(picture, (gap, header))
    canvas.paste(blended, (2 * gap + size[0], header))
    ramp = jet_lut()[np.linspace(255, 0, size[1]).round().astype(np.int64)]
    bar_left = 3 * gap + 2 * size[0]
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar, axis=1)), (bar_left, header))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((gap, 2), "image", fill="black", font=font)
    draw.text((2 * gap + size[0], 2), (title or "anomaly map")[:80], fill="black", font=font)
    draw.text((bar_left + bar + 3, header), f"{high:.3g}", fill="black", font=font)
    draw.text((bar_left + bar + 3, header + size[1] - 11), f"{low:.3g}", fill="black", font=font)
    return canvas


def thumbnail_picture(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None,
                      vmin: float | None = None, vmax: float | None = None, size: int = THUMB_PX):
    """A Pillow image for the gallery: the ``overlay_panels`` at the map's size, each shrunk to
    ``size`` pixels a side, side by side."""
    from PIL import Image
    panels = [panel.resize((size, size), Image.BILINEAR)
              for panel in overlay_panels(image, anomaly_map, mask, vmin, vmax)]
    out = Image.new("RGB", (2 * size + 2, size), (255, 255, 255))
    out.paste(panels[0], (0, 0))
    out.paste(panels[1], (size + 2, 0))
    return out


def save_overlay(image: np.ndarray, anomaly_map: np.ndarray, path: str | Path, mask: np.ndarray | None = None,
                 vmin: float | None = None, vmax: float | None = None, title: str = "",
                 meta: dict[str, str] | None = None) -> str:
    """Image | heat map over the image (ground-truth contour when known), as a PNG written atomically;
    ``meta``: text chunks kept in the PNG (what it was drawn from)."""
    from PIL.PngImagePlugin import PngInfo
    from ..store import atomic_output
    path = Path(path)
    info = PngInfo()
    for key, value in (meta or {}).items():
        info.add_text(key, value)
    with atomic_output(path) as scratch:
        overlay_picture(image, anomaly_map, mask, vmin, vmax, title).save(scratch, format="PNG", compress_level=1,
                                                                          pnginfo=info)
    return str(path)


def save_curves(curves: BinaryCurves | PixelCurves, path: str | Path, title: str) -> str:
    """ROC and PR curves side by side (the evaluation's curves); at most about 2000 points of each
    curve are drawn (millions of pixels make no visible difference; the pixels' come thinned)."""
    best_f1 = curves.f1_max()
    fpr, tpr = _thinned(curves.fpr, curves.tpr)
    recall, precision = _thinned(curves.recall, curves.precision)
    fig = new_figure(8, 3.6)
    roc_axis, pr_axis = fig.subplots(1, 2)
    roc_axis.plot(fpr, tpr)
    roc_axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc_axis.set(xlabel="false positive rate", ylabel="true positive rate",
                 title=f"{title} ROC (AUROC {metric_text(curves.auroc())})")
    pr_axis.plot(recall, precision)
    pr_axis.set(xlabel="recall", ylabel="precision", title=f"{title} PR (F1-max {metric_text(best_f1)})")
    for axis in (roc_axis, pr_axis):
        axis.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return str(path)


def _thinned(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``points`` points of a curve, its ends kept."""
    shown = np.unique(np.r_[np.linspace(0, x.size - 1, min(x.size, points)).astype(np.int64), x.size - 1])
    return x[shown], y[shown]


def save_histograms(inputs: EvaluationInputs, evaluation: Evaluation, path: str | Path) -> str:
    """Image scores of normal vs anomalous images, before and after RsCIN, with the thresholds
    drawn in: the decision threshold on the final (RsCIN) scores, and on the raw scores (the maxima
    of the maps) the pixel threshold, above which an image gets defect pixels."""
    from matplotlib.ticker import MaxNLocator
    labels = np.asarray(inputs.labels)
    fig = new_figure(9, 3.8)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], inputs.raw, "raw scores (max of the map)", evaluation.pixel_threshold, "pixel threshold"),
              (axes[1], inputs.scores, "final scores (after RsCIN)", evaluation.threshold, "decision threshold"))
    for axis, scores, title, line, line_label in panels:
        scores = np.asarray(scores, dtype=np.float64)
        bins = np.histogram_bin_edges(scores, bins=20)
        if (labels >= 0).all():
            axis.hist(scores[labels == 0], bins=bins, alpha=0.6, label=NORMAL)
            axis.hist(scores[labels == 1], bins=bins, alpha=0.6, label=ANOMALOUS)
        else:
            axis.hist(scores, bins=bins, alpha=0.8, label="all images (labels unknown)")
        if line is not None and np.isfinite(line):
            axis.axvline(line, color="k", linestyle="--", linewidth=1.2, label=f"{line_label} {line:.4g}")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: whole ticks
        axis.set(xlabel="score", ylabel="images")
        axis.set_title(title, fontsize=10)
        # the legend below the axes: it never covers a bar
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return str(path)


def save_metric_bars(table, path: str | Path) -> str:
    """Per-category bar chart of the metrics of a dataset run; not redrawn (nor matplotlib loaded)
    when the PNG exists and was drawn from the same table (a cached rerun)."""
    path = Path(path)
    shown = table[list(METRIC_NAMES)].drop(index="mean", errors="ignore")
    stamp = path.with_name(f".{path.name}.key")
    key = hashlib.blake2b(shown.to_csv().encode(), digest_size=16).hexdigest()
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return str(path)
    fig = new_figure(max(7, 1.2 * len(shown) + 2), 3.8)
    axis = fig.subplots()
    shown.rename(columns=SHORT_NAMES).plot.bar(ax=axis, width=0.85)
    axis.set(ylabel="x100", ylim=(0, 100), xlabel="")
    axis.tick_params(axis="x", labelrotation=0)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside: covers no bar
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    stamp.write_text(key)
    return str(path)


def load_drawing_modules() -> None:
    """Import what drawing the pictures needs, in the calling thread, before threads draw. Two
    threads importing related packages at once can meet a half-initialised module (a scikit-learn
    import in one thread and a scipy.ndimage import in another raised ImportError), so the
    drawing threads import nothing themselves."""
    from PIL import Image, ImageDraw  # noqa: F401
    Image.init()  # Pillow's format plugins, otherwise imported on the first save
    _font()


PICTURE_INDEX = ".index.json"  # in the overlays folder: the key each image's pictures were drawn from
PICTURE_THREADS = 2


def picture_key(image_path: str, anomaly_map: np.ndarray, mask: np.ndarray | None, vmin, vmax, title: str,
                name: str | None = None) -> str:
    """What an image's pictures show: the drawing code, the map and mask values, the scaling, the
    title and the image file (its ``name`` as the outputs name it, else its path; its size and
    modification time). The same key means the same PNGs: a dataset moved with its times kept
    draws nothing again."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        stat = os.stat(image_path)
        identity = (str(name or image_path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        identity = (str(name or image_path), None, None)
    digest.update(json.dumps([RENDER_VERSION, identity, vmin, vmax, title, list(anomaly_map.shape)]).encode())
    digest.update(np.ascontiguousarray(anomaly_map).tobytes())
    if mask is not None:
        digest.update(np.packbits(np.asarray(mask) > 0.5).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Pictures:
    """The PNGs drawn for each image, in the images' order."""
    overlays: list[str]
    thumbs: list[str]


def render_pictures(folder: Path, inputs: EvaluationInputs, overlay_normalisation: str) -> Pictures:
    """Per image, an overlay (``folder/overlays``: the image and its anomaly map) and a gallery
    thumbnail (``folder/thumbs``), with whole-set ('set') or per-image ('image') scaling; each image is
    decoded once for both, and two threads draw (Pillow decodes, resizes and encodes without the GIL).

    Draws only what changed: an image whose PNGs exist and whose key (``picture_key``) equals the
    one recorded in ``overlays/.index.json`` when they were drawn is kept as it is. So a rerun of
    evaluate into the same folder (after a corrupt or deleted evaluate artifact, or ``musc report``)
    redraws nothing unless the maps, masks, scaling, image files or drawing code changed."""
    overlays, thumbs = Path(folder) / "overlays", Path(folder) / "thumbs"
    overlays.mkdir(parents=True, exist_ok=True)
    thumbs.mkdir(parents=True, exist_ok=True)
    paths, names, maps, masks, has_mask = inputs.image_files, inputs.names, inputs.maps, inputs.masks, inputs.has_mask
    low, high = (float(maps.min()), float(maps.max())) if overlay_normalisation == "set" else (None, None)
    size = (maps.shape[-1], maps.shape[-2])  # (width, height): S x S, or a tiled run's full resolution
    index_file = overlays / PICTURE_INDEX
    try:
        drawn = json.loads(index_file.read_text())
    except (OSError, ValueError):
        drawn = {}
    keys, todo = {}, []
    for index, (path, name) in enumerate(zip(paths, names)):
        file_name = png_name(name)
        mask = masks[index] if has_mask[index] else None
        title = f"{name}  score {inputs.scores[index]:.4f}"
        key = picture_key(str(path), maps[index], mask, low, high, title, str(inputs.paths[index]))
        if drawn.get(file_name) != key or not (overlays / file_name).is_file() or not (thumbs / file_name).is_file():
            todo.append((path, index, file_name, mask, title))  # its map read again when drawn: one held at a time
        keys[file_name] = key

    def draw(job) -> None:
        path, index, file_name, mask, title = job
        anomaly_map = maps[index]
        try:
            image = np.asarray(load_image(path).resize(size, reducing_gap=3.0))
        except UnreadableImage:
            image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        save_overlay(image, anomaly_map, overlays / file_name, mask, low, high, title=title)
        scratch = thumbs / f".{file_name}.tmp"
        thumbnail_picture(image, anomaly_map, mask, low, high).save(scratch, format="PNG", compress_level=6)
        os.replace(scratch, thumbs / file_name)

    load_drawing_modules()
    with ThreadPoolExecutor(max_workers=min(PICTURE_THREADS, max(1, len(todo)))) as pool:
        list(pool.map(draw, todo))
    scratch = index_file.with_name(index_file.name + ".tmp")
    scratch.write_text(json.dumps(keys, sort_keys=True))
    os.replace(scratch, index_file)
    return Pictures([str(overlays / png_name(n)) for n in names], [str(thumbs / png_name(n)) for n in names])
