"""One typed, validated run configuration, and the settings objects each stage takes from it.

Each field is declared once (``Annotated[type, about(help, bounds)]``, a ``Literal`` for a choice):
its type, default, bounds, choices and help. The checks (``values.check_fields``), the command
line's options (``flows/options.py``) and the Prefect run form (pydantic reads the same declaration)
derive from it. Defaults are the paper's (docs/METHOD.md section 8). Every invalid value raises
``ConfigError`` with a one-line message that names the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict

from ..method.checks import EXACT_PRECISIONS, PRECISIONS, TOPMIN_MAX, TOPMIN_MIN
from ..method.blocks import TILE_MIXINGS
from .values import ConfigError, about, check_fields, shown

MAX_TILES = 16  # tiles per side: beyond it a part is better cut into several images
# Retrieval against a reference pool, declared once: a run's guard (MuscConfig) and the line's
# decision (musc.reference_pool.rule.DecisionRule) take it from here.
PoolTopK = Annotated[int | None, about(
    "Score each image against only its k nearest reference-pool images by a global embedding (retrieval, "
    "faster for large pools; the calibrated threshold is taken the same way). Empty: against every pool "
    "image, exactly.", ge=1)]


@dataclass(frozen=True)
class MuscConfig:
    """A MuSc run's settings (the defaults are the paper's). A flow parameter: a deployment's run
    form shows each field with its description."""
    __pydantic_config__ = ConfigDict(extra="forbid")

    backbone: Annotated[str, about("The backbone: an open_clip model name, the path of an open_clip JSON model "
                                   "config, or timm:NAME (DINO / DINOv2 ViTs, e.g. timm:vit_small_patch14_dinov2).",
                                   min_length=1)] = "ViT-L-14-336"
    pretrained: Annotated[str, about("The backbone's weights: an open_clip tag, a local checkpoint file "
                                     "(.pt/.bin/.safetensors), or none (seeded random weights, for tests only).",
                                     min_length=1)] = "openai"
    image_size: Annotated[int, about("The side S, in pixels, the images are resized to; a multiple of the patch "
                                     "size.", ge=1, le=4096)] = 518
    layers: Annotated[tuple[int, ...], about("The backbone blocks whose patch tokens are used, 0-based.",
                                             min_length=1)] = (5, 11, 17, 23)
    r_list: Annotated[tuple[int, ...], about("The LNAMD aggregation degrees r, odd: one aggregate and one score "
                                             "per degree.", min_length=1)] = (1, 3, 5)
    topmin_min: Annotated[float, about("The start of MSM's window over each patch's sorted votes, as a fraction "
                                       "of the other images.", ge=0, le=1)] = TOPMIN_MIN
    topmin_max: Annotated[float, about("The end of MSM's window over each patch's sorted votes, as a fraction "
                                       "of the other images.", ge=0, le=1)] = TOPMIN_MAX
    k_list: Annotated[tuple[int, ...] | None, about("The RsCIN window sizes. Empty: the paper's for the "
                                                    "dataset (1,2,3; 1,8,9 for VisA).", min_length=1)] = None
    divide_num: Annotated[int, about("The number of subsets a category is scored in (1: all images score each "
                                     "other).", ge=1, le=1000)] = 1
    seed: Annotated[int, about("The seed of the subset shuffles and of random backbone weights.",
                               ge=0, le=2**32 - 1)] = 42
    batch_size: Annotated[int, about("The images per extraction batch; it changes no result.", ge=1, le=1024)] = 4
    block_size: Annotated[int, about("The images per side of an MSM tile; it changes no result.",
                                     ge=1, le=4096)] = 8
    device: Annotated[str, about("Where to compute: auto, cpu, cuda or cuda:N (the GPU numbered N).")] = "auto"
    quick_gelu: Annotated[Literal["auto", "true", "false"], about(
        "Whether the backbone uses QuickGELU: auto (as its model config or tag says), true or false.")] = "auto"
    threshold: Annotated[float | None, about("A fixed image-score threshold for the decisions. Empty: F1-optimal "
                                             "when labels of both classes exist, else median + 3.5 MAD of the "
                                             "scores.")] = None
    pixel_threshold: Annotated[float | None, about("A fixed pixel threshold for the binary defect masks. Empty: "
                                                   "F1-optimal on the ground-truth pixels, else the robust rule on "
                                                   "the image scores.")] = None
    overlay_normalisation: Annotated[Literal["set", "image"], about(
        "How the heat-map overlays are scaled: set (one scale for the category, comparable across images) or "
        "image (each image its own).")] = "set"
    aligned_radius: Annotated[int | None, about("Let a patch be voted on only by the patches within this many grid "
                                                "steps of its position (for fixtured parts). Empty: any position, "
                                                "as in the paper.", ge=0, le=4096)] = None
    msm_precision: Annotated[Literal[PRECISIONS], about(
        "MSM's arithmetic: fp32; bf16 (screened in bf16, the same scores); bf16-fast (bf16 only, faster, not "
        "exact).")] = "fp32"
    tiles: Annotated[tuple[int, int] | None, about(
        "Cut each image into RxC tiles (e.g. 2x2), each resized to the image size, to find small defects on "
        "large parts; maps are stitched at the image's full resolution. Empty: the whole image, as the "
        "paper.")] = None
    tile_overlap: Annotated[float, about("The overlap of neighbouring tiles, a fraction of a tile (0 to below 0.5); "
                                         "overlapping map pixels are averaged.", ge=0, lt=0.5)] = 0.0
    tile_mixing: Annotated[Literal[TILE_MIXINGS], about(
        "aligned: tiles of the same position score each other (fixtured parts); all: every tile against every "
        "tile of the other images (parts not aligned).")] = "aligned"
    reference: Annotated[str | None, about(
        "A reference pool of good parts (.h5, musc pool add): each image is also scored against it alone; "
        "per_image.csv and the report mark the images the pool flags while the batch calls them normal (a "
        "defect shared by many images of one batch hides from mutual scoring), with a warning when several "
        "are.", min_length=1)] = None
    pool_top_k: PoolTopK = None

    def __post_init__(self) -> None:
        check_fields(self)  # each field from its declaration; below, what ties fields together
        if any(layer < 0 for layer in self.layers):
            raise ConfigError(f"layers: block indices are 0-based and >= 0, got {list(self.layers)}")
        if any(r < 1 or r % 2 == 0 for r in self.r_list):
            raise ConfigError(f"r_list: degrees must be odd and >= 1, got {list(self.r_list)}")
        if not float(self.topmin_min) < float(self.topmin_max):
            raise ConfigError(f"topmin_max: need 0 <= topmin_min < topmin_max <= 1, got "
                              f"topmin_min={self.topmin_min}, topmin_max={self.topmin_max}")
        if self.k_list is not None and any(k < 0 for k in self.k_list):
            raise ConfigError(f"k_list: must be non-negative window sizes, got {self.k_list}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ConfigError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {shown(self.device)}")
        if self.tiles is not None and not all(1 <= n <= MAX_TILES for n in self.tiles):
            raise ConfigError(f"tiles: rows and columns must be between 1 and {MAX_TILES}, got {list(self.tiles)}")
        if self.pool_top_k is not None and self.reference is None:
            raise ConfigError(f"pool_top_k: {self.pool_top_k} applies only with a reference pool; give "
                              "--reference POOL or leave pool_top_k out")
        defaults = {f.name: f.default for f in fields(self)}
        for name in ("tile_overlap", "tile_mixing"):  # settings of a tiled run, which no untiled run reads
            if self.tiles is None and getattr(self, name) != defaults[name]:
                raise ConfigError(f"{name}: {shown(getattr(self, name))} applies only to a tiled run; give tiles "
                                  f"(e.g. --tiles 2x2) or leave {name} out")

    def k_list_for(self, dataset: str) -> tuple[int, ...]:
        """RsCIN window sizes: the configured ones, else the paper's for the dataset's layout."""
        from .datasets import layout
        return self.k_list if self.k_list is not None else layout(dataset).k_list

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
            raise ConfigError(f"{source}: unknown field {shown(unknown[0])} (known: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MuscConfig":
        from .yaml_files import load_yaml
        path = Path(path)
        values = load_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of field names to values")
        return cls.from_dict(values, source=str(path))

    @property
    def extract(self) -> "ExtractSettings":
        """The extract stage's settings: the tile overlap only when tiled."""
        return ExtractSettings.of(self, tile_overlap=float(self.tile_overlap) if self.tiles is not None else None)

    @property
    def score(self) -> "ScoreSettings":
        """The score stage's settings: the tile mixing only when tiled."""
        return ScoreSettings.of(self, topmin_min=float(self.topmin_min), topmin_max=float(self.topmin_max),
                                tile_mixing=self.tile_mixing if self.tiles is not None else None)

    @property
    def evaluate(self) -> "EvaluateSettings":
        return EvaluateSettings.of(self)


# The settings each stage takes from the configuration ---------------------------------------------

_DEFAULTS = {f.name: f.default for f in fields(MuscConfig)}  # every default is written once: in MuscConfig


def decides(name: str | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A setting that decides a stage's output: it enters the stage's cache key and is recorded.
    Its default is the configuration field ``name``'s."""
    return dataclasses.field(default=_DEFAULTS[name] if name else default, metadata={"decides": True})


def decides_when_set() -> Any:
    """A deciding setting that enters the key only when set (not None): a setting added later (tiling)
    leaves the keys of the runs that do not use it as they were."""
    return dataclasses.field(default=None, metadata={"decides": True, "when_set": True})


def how(name: str) -> Any:
    """A setting that decides only how the work is done (device, memory, speed): not in the key."""
    return dataclasses.field(default=_DEFAULTS[name], metadata={"decides": False})


class StageSettings:
    """What a stage takes from the configuration, declared once per field (``decides`` or ``how``):
    the cache key's settings and the artifact's recorded config are both ``recorded()``, and
    ``from_recorded`` reads them back from an artifact."""

    @classmethod
    def of(cls, config: MuscConfig, **given: Any) -> Any:
        """The settings of a run's configuration: each field from the configuration field of the same
        name; ``given``: values the configuration does not hold as they are (a stage's own view)."""
        return cls(**{f.name: given[f.name] if f.name in given else getattr(config, f.name) for f in fields(cls)})

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
    quick_gelu: str = decides("quick_gelu")
    seed: int = decides("seed")
    device: str = how("device")
    batch_size: int = how("batch_size")
    tiles: tuple[int, int] | None = decides_when_set()     # rows, columns of tiles per image (None: whole image)
    tile_overlap: float | None = decides_when_set()        # a fraction of a tile (set when tiles are)


@dataclass(frozen=True)
class ScoreSettings(StageSettings):
    """How MSM scores a set of images: the one type used by the score stage and the reference pool.
    The exact precisions (fp32, the bf16 screen) give the same scores, so both are recorded (and
    keyed) as fp32; bf16-fast changes the scores. The subset seed matters only with subsets (divide_num > 1)."""
    topmin_min: float = decides("topmin_min")
    topmin_max: float = decides("topmin_max")
    divide_num: int = decides("divide_num")
    seed: int = decides("seed")
    aligned_radius: int | None = decides("aligned_radius")
    msm_precision: str = decides("msm_precision")
    block_size: int = how("block_size")
    device: str = how("device")
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
    threshold: float | None = decides("threshold")
    pixel_threshold: float | None = decides("pixel_threshold")
    overlay_normalisation: str = decides("overlay_normalisation")
