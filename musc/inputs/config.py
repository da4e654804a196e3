"""One typed, validated run configuration, and the settings objects each stage takes from it.

Defaults are the paper's (docs/METHOD.md section 8). Every invalid value raises ``ConfigError``
with a one-line message that names the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict
from pydantic import Field as PydanticField
from pydantic.fields import FieldInfo

from ..method.checks import EXACT_PRECISIONS, check_precision
from ..method.tiles import TILE_MIXINGS

# The paper's windows for MVTec AD, BTAD and VisA; the later layouts take MVTec AD's (no published
# values: their categories hold tens to hundreds of test images per set, as MVTec AD's do).
DEFAULT_K_LISTS = {"mvtec_ad": (1, 2, 3), "btad": (1, 2, 3), "folder": (1, 2, 3), "visa": (1, 8, 9),
                   "mvtec_ad2": (1, 2, 3), "mvtec_loco": (1, 2, 3), "mpdd": (1, 2, 3), "real_iad": (1, 2, 3),
                   "kolektor": (1, 2, 3), "autovi": (1, 2, 3)}

# Bounds of the integer settings: beyond them the work hangs (divide_num subsets listed one by one),
# overflows (torch's sizes and seeds) or only burns time; within them every run the paper describes fits.
LIMITS = {"image_size": 4096, "divide_num": 1000, "batch_size": 1024, "block_size": 4096,
          "aligned_radius": 4096, "seed": 2**32 - 1}
MAX_TILES = 16  # tiles per side: beyond it a part is better cut into several images
MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few lines; a larger file is not one


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _about(text: str) -> FieldInfo:
    return PydanticField(description=text)


@dataclass(frozen=True)
class MuscConfig:
    """A MuSc run's settings (the defaults are the paper's). A flow parameter: a deployment's run
    form shows each field with its description."""
    __pydantic_config__ = ConfigDict(extra="forbid")

    backbone: Annotated[str, _about("open_clip model name, path of an open_clip JSON model config, or "
                                    "timm:<name> (DINO / DINOv2 ViTs).")] = "ViT-L-14-336"
    pretrained: Annotated[str, _about("open_clip weights tag, a local checkpoint file (.pt/.bin/.safetensors), "
                                      "or none (seeded random weights: tests only).")] = "openai"
    image_size: Annotated[int, _about("Side of the square the images are resized to, in pixels (a multiple "
                                      "of the patch size).")] = 518
    layers: Annotated[tuple[int, ...], _about("Transformer blocks (0-based) whose patch tokens are used.")] = (
        5, 11, 17, 23)
    r_list: Annotated[tuple[int, ...], _about("LNAMD aggregation degrees r (odd): one aggregate and one score "
                                              "per degree.")] = (1, 3, 5)
    topmin_min: Annotated[float, _about("MSM: lower end of the averaged share of the sorted votes.")] = 0.0
    topmin_max: Annotated[float, _about("MSM: upper end of the averaged share of the sorted votes.")] = 0.3
    k_list: Annotated[tuple[int, ...] | None, _about("RsCIN window sizes (empty: the paper's per dataset).")] = None
    divide_num: Annotated[int, _about("Score the images in this many random subsets (1: all together).")] = 1
    seed: Annotated[int, _about("Seed of the subsets and of random backbone weights.")] = 42
    batch_size: Annotated[int, _about("Images per extraction batch (memory, not results).")] = 4
    block_size: Annotated[int, _about("Images per MSM tile side (memory, not results).")] = 8
    device: Annotated[str, _about("auto, cpu or cuda[:n].")] = "auto"
    quick_gelu: Annotated[str, _about("auto, true or false: the QuickGELU activation of OpenAI CLIP "
                                      "weights.")] = "auto"
    threshold: Annotated[float | None, _about("Fixed image-score threshold (empty: chosen from the data).")] = None
    pixel_threshold: Annotated[float | None, _about("Fixed anomaly-map threshold of the binary masks "
                                                    "(empty: chosen from the data).")] = None
    overlay_normalisation: Annotated[str, _about("Heat-map scale of the overlays: set (comparable across "
                                                 "images) or image.")] = "set"
    aligned_radius: Annotated[int | None, _about("Aligned parts: compare each patch only with patches within "
                                                 "this many grid steps (empty: all patches, as the paper).")] = None
    msm_precision: Annotated[str, _about("fp32, bf16 (screened, the same scores) or bf16-fast (faster, not "
                                         "exact).")] = "fp32"
    tiles: Annotated[tuple[int, int] | None, _about("Cut each image into R x C tiles ([R, C] or \"RxC\"), each "
                                                    "resized to image_size, for small defects on large parts; the "
                                                    "maps are stitched at the image's full resolution (empty: the "
                                                    "whole image, as the paper).")] = None
    tile_overlap: Annotated[float, _about("Overlap of neighbouring tiles, a fraction of a tile (0 <= F < 0.5); "
                                          "overlapping map pixels are averaged.")] = 0.0
    tile_mixing: Annotated[str, _about("aligned: tiles of the same position score each other (fixtured parts); "
                                       "all: every tile against every tile of the other images.")] = "aligned"
    reference: Annotated[str | None, _about("A reference pool of good parts (.h5, musc pool add): each image "
                                            "is also scored against it alone, and the images the pool flags "
                                            "while the batch calls them normal are marked (a defect shared by "
                                            "many images of one batch hides from mutual scoring). An extra "
                                            "step after evaluate; the batch's own results are unchanged.")] = None

    def __post_init__(self) -> None:
        for name in ("layers", "r_list", "k_list"):
            value = getattr(self, name)
            if value is not None:  # tuples too: MuscConfig(layers=(1.5,)) is as wrong as a YAML list
                object.__setattr__(self, name, _as_int_tuple(name, value))
        for name in ("backbone", "pretrained", "device", "quick_gelu", "overlay_normalisation", "msm_precision",
                     "tile_mixing"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}: expected text, got {_shown(getattr(self, name))}")
        for name in ("topmin_min", "topmin_max"):
            _check_number(name, getattr(self, name))
        _check_int("image_size", self.image_size, minimum=1)
        _check_int("divide_num", self.divide_num, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("block_size", self.block_size, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if not self.layers:
            raise ConfigError("layers: must name at least one block")
        if any(layer < 0 for layer in self.layers):
            raise ConfigError(f"layers: block indices are 0-based and >= 0, got {list(self.layers)}")
        if not self.r_list:
            raise ConfigError("r_list: must hold at least one aggregation degree")
        if any(r < 1 or r % 2 == 0 for r in self.r_list):
            raise ConfigError(f"r_list: degrees must be odd and >= 1, got {list(self.r_list)}")
        if not 0.0 <= float(self.topmin_min) < float(self.topmin_max) <= 1.0:
            raise ConfigError(
                f"topmin_max: need 0 <= topmin_min < topmin_max <= 1, got "
                f"topmin_min={self.topmin_min}, topmin_max={self.topmin_max}")
        if self.k_list is not None and (not self.k_list or any(k < 0 for k in self.k_list)):
            raise ConfigError(f"k_list: must be non-negative window sizes, got {self.k_list}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ConfigError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {_shown(self.device)}")
        if self.quick_gelu not in ("auto", "true", "false"):
            raise ConfigError(f"quick_gelu: expected 'auto', 'true' or 'false', got {_shown(self.quick_gelu)}")
        for name in ("threshold", "pixel_threshold"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name))
        if self.aligned_radius is not None:
            _check_int("aligned_radius", self.aligned_radius, minimum=0)
        try:
            check_precision(self.msm_precision)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.tiles is not None:
            object.__setattr__(self, "tiles", _tile_grid(self.tiles))
        _check_number("tile_overlap", self.tile_overlap)
        if not 0.0 <= float(self.tile_overlap) < 0.5:
            raise ConfigError(f"tile_overlap: must be in [0, 0.5), got {self.tile_overlap}")
        if self.tile_mixing not in TILE_MIXINGS:
            raise ConfigError(f"tile_mixing: expected {' or '.join(map(repr, TILE_MIXINGS))}, got {_shown(self.tile_mixing)}")
        if self.overlay_normalisation not in ("set", "image"):
            raise ConfigError(f"overlay_normalisation: expected 'set' or 'image', got {_shown(self.overlay_normalisation)}")
        if self.reference is not None and (not isinstance(self.reference, str) or not self.reference):
            raise ConfigError(f"reference: expected the path of a pool file (.h5), got {_shown(self.reference)}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError("backbone: expected an open_clip model name or a JSON config path")

    def k_list_for(self, dataset: str) -> tuple[int, ...]:
        """RsCIN window sizes: the configured ones, else the paper's per dataset."""
        return self.k_list if self.k_list is not None else DEFAULT_K_LISTS.get(dataset, (1, 2, 3))

    def replace(self, **changes: Any) -> "MuscConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> "MuscConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field {_shown(unknown[0])} (known: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MuscConfig":
        path = Path(path)
        values = load_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of field names to values")
        return cls.from_dict(values, source=str(path))

    @property
    def extract(self) -> "ExtractSettings":
        tiled = self.tiles is not None
        return ExtractSettings(self.backbone, self.pretrained, self.image_size, self.layers, self.quick_gelu,
                               self.seed, self.device, self.batch_size, self.tiles,
                               float(self.tile_overlap) if tiled else None)

    @property
    def score(self) -> "ScoreSettings":
        return ScoreSettings(float(self.topmin_min), float(self.topmin_max), self.divide_num, self.seed,
                             self.aligned_radius, self.msm_precision, self.block_size, self.device,
                             self.tile_mixing if self.tiles is not None else None)

    @property
    def evaluate(self) -> "EvaluateSettings":
        return EvaluateSettings(self.threshold, self.pixel_threshold, self.overlay_normalisation)


def decides(default: Any = dataclasses.MISSING) -> Any:
    """A setting that decides a stage's output: it enters the stage's cache key and is recorded."""
    return dataclasses.field(default=default, metadata={"decides": True})


def decides_when_set(default: Any = None) -> Any:
    """A deciding setting that enters the key only when set (not None): a setting added later (tiling)
    leaves the keys of the runs that do not use it as they were."""
    return dataclasses.field(default=default, metadata={"decides": True, "when_set": True})


def how(default: Any = dataclasses.MISSING) -> Any:
    """A setting that decides only how the work is done (device, memory, speed): not in the key."""
    return dataclasses.field(default=default, metadata={"decides": False})


class StageSettings:
    """What a stage takes from the configuration, declared once per field (``decides`` or ``how``):
    the cache key's settings and the artifact's recorded config are both ``recorded()``, and
    ``from_recorded`` reads them back from an artifact."""

    def normalised(self) -> "StageSettings":
        """The deciding values as they enter the key (subclasses map equivalent values to one)."""
        return self

    def recorded(self) -> dict[str, Any]:
        chosen = self.normalised()
        return {f.name: (list(v) if isinstance(v := getattr(chosen, f.name), tuple) else v)
                for f in fields(self) if f.metadata.get("decides")
                and not (f.metadata.get("when_set") and getattr(chosen, f.name) is None)}

    def work(self) -> dict[str, Any]:
        """The settings that only decide how the work is done."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("decides")}

    @classmethod
    def from_recorded(cls, config: dict[str, Any], **work: Any) -> Any:
        """The settings an artifact recorded (its ``config``), with ``work`` settings (else defaults)."""
        values = {f.name: config[f.name] for f in fields(cls) if f.metadata.get("decides") and f.name in config}
        values.update(work)
        for f in fields(cls):
            if isinstance(values.get(f.name), list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)


@dataclass(frozen=True)
class ExtractSettings(StageSettings):
    """What the extract stage needs: the backbone and how to run it."""
    backbone: str = decides()
    pretrained: str = decides()
    image_size: int = decides()
    layers: tuple[int, ...] = decides()
    quick_gelu: str = decides("auto")
    seed: int = decides(42)
    device: str = how("auto")
    batch_size: int = how(4)
    tiles: tuple[int, int] | None = decides_when_set()     # rows, columns of tiles per image (None: whole image)
    tile_overlap: float | None = decides_when_set()        # a fraction of a tile (set when tiles are)


@dataclass(frozen=True)
class ScoreSettings(StageSettings):
    """How MSM scores a set of images: the one type used by the score stage and the reference pool.
    The exact precisions (fp32, the bf16 screen) give the same scores, so both are recorded (and
    keyed) as fp32; bf16-fast changes the scores. The subset seed matters only with subsets (divide_num > 1)."""
    topmin_min: float = decides(0.0)
    topmin_max: float = decides(0.3)
    divide_num: int = decides(1)
    seed: int = decides(42)
    aligned_radius: int | None = decides(None)
    msm_precision: str = decides("fp32")
    block_size: int = how(8)
    device: str = how("auto")
    tile_mixing: str | None = decides_when_set()           # aligned or all (set when tiled)

    def normalised(self) -> "ScoreSettings":
        exact = self.msm_precision in EXACT_PRECISIONS
        return dataclasses.replace(self, topmin_min=float(self.topmin_min), topmin_max=float(self.topmin_max),
                                   seed=int(self.seed) if int(self.divide_num) > 1 else None,
                                   msm_precision="fp32" if exact else self.msm_precision)


@dataclass(frozen=True)
class EvaluateSettings(StageSettings):
    """What the evaluate stage needs: fixed thresholds (None: chosen from the data) and how overlays
    are scaled."""
    threshold: float | None = decides(None)
    pixel_threshold: float | None = decides(None)
    overlay_normalisation: str = decides("set")


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Integers from a list, a tuple or "1,3,5"; 1.5, "a", true are refused (naming the field)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        items = list(value)
    except TypeError:
        raise ConfigError(f"{name}: expected a list of integers, got {_shown(value)}") from None
    result = []
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("+-").isdigit():
            item = int(item)
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{name}: expected a list of integers, got {_shown(value)}")
        result.append(item)
    return tuple(result)


def _tile_grid(value: Any) -> tuple[int, int]:
    """[R, C], (R, C) or "RxC" -> (R, C) with 1 <= R, C <= MAX_TILES (ConfigError naming ``tiles``)."""
    if isinstance(value, str):
        value = value.lower().replace("x", ",")
    items = _as_int_tuple("tiles", value)
    if len(items) != 2:
        raise ConfigError(f"tiles: expected rows and columns, [R, C] or RxC, got {_shown(value)}")
    if not all(1 <= n <= MAX_TILES for n in items):
        raise ConfigError(f"tiles: rows and columns must be between 1 and {MAX_TILES}, got {list(items)}")
    return items


def _shown(value: Any, limit: int = 80) -> str:
    """A value for an error line: its repr, cut short (an error is one line, whatever was written)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_number(name: str, value: Any) -> None:
    """A real number, finite; YAML reads 1e-9 (no dot) as text: say how to write it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads this as text: write it with a dot, e.g. 1.0e-9)"
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {_shown(value)}{hint}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {_shown(value)}")
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    if name in LIMITS and value > LIMITS[name]:
        shown = str(value) if value < 10**30 else f"a number of {len(str(value))} digits"
        raise ConfigError(f"{name}: must be <= {LIMITS[name]}, got {shown}")


def check_decision(threshold: Any, false_alarm_rate: Any, names: tuple[str, str] = ("threshold", "false_alarm_rate")) -> None:
    """ConfigError naming the field unless a fixed threshold (None: calibrated on the pool) is a
    finite number and the false-alarm rate a number in [0, 1): NaN would make every part normal."""
    if threshold is not None:
        _check_number(names[0], threshold)
    _check_number(names[1], false_alarm_rate)
    if not 0 <= false_alarm_rate < 1:
        raise ConfigError(f"{names[1]}: must be in [0, 1), got {false_alarm_rate}")


# YAML: safe, without aliases (a few hundred bytes of nested aliases expand to gigabytes) and without
# duplicate keys (the last one silently winning) ------------------------------------------------------

class _StrictYamlError(yaml.YAMLError):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(f"{message} (line {mark.line + 1}, column {mark.column + 1})" if mark else message)


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing aliases (``*name``) and duplicate mapping keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _StrictYamlError(f"alias *{event.anchor} refused (write the value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader says so itself
                continue
            if duplicate:
                raise _StrictYamlError(f"duplicate key {_shown(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    """A YAML file read with ``StrictLoader``, at most MAX_CONFIG_BYTES; ConfigError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file ({error.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a configuration file")
    try:
        return yaml.load(data.decode("utf-8-sig"), Loader=StrictLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0][:200]})") from None
