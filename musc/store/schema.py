"""The artifact format, declared once: for each stage, its HDF5 datasets (meaning, dtype, shape)
and attributes, and the version of the code that writes it.

The writer (``write_artifact``) refuses a dataset that is not declared here and checks that every
required one is present; ``Artifact.read`` refuses names that are not declared; ``musc inspect``
prints the meanings; docs/ARTIFACTS.md is generated from this module (a test keeps them equal:
``python -m musc.store.schema > docs/ARTIFACTS.md``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Field:
    name: str            # "<r>" stands for a number (pool: one dataset per degree)
    dtype: str
    shape: str
    meaning: str
    required: bool = True

    def matches(self, name: str) -> bool:
        return re.fullmatch(re.escape(self.name).replace(re.escape("<r>"), r"\d+"), name) is not None

    def dimensions(self, ndim: int) -> tuple[str, ...]:
        """The names of a dataset's axes from its declared shape (``(layers, N, L)``): none when the
        shape has alternatives or another number of axes."""
        found = re.fullmatch(r"\((.*)\)", self.shape.strip())
        if found is None or " or " in self.shape:
            return ()
        names = tuple(name.strip() for name in found.group(1).split(",") if name.strip())
        return names if len(names) == ndim else ()


@dataclass(frozen=True)
class Stage:
    name: str
    version: str         # bump when a change to the stage's code changes its output
    meaning: str
    datasets: tuple[Field, ...] = ()
    attrs: tuple[Field, ...] = ()
    open_datasets: bool = False  # parts hold whatever their stage puts in them

    @property
    def code_version(self) -> str:
        """The version of the code that writes the stage (not the package's: a release that leaves a
        stage's output as it was keeps its artifacts)."""
        return f"musc/{self.name}-{self.version}"

    def field(self, name: str) -> Field | None:
        top = name.split("/", 1)[0]
        return next((f for f in self.datasets if f.matches(top)), None)

    def check_names(self, names, path) -> None:
        """Every dataset declared, every required one present (ValueError naming the file)."""
        if self.open_datasets:
            return
        undeclared = sorted(n for n in names if self.field(n) is None)
        if undeclared:
            raise ValueError(f"{path}: dataset {undeclared[0]!r} is not declared for stage {self.name!r} "
                             f"(musc/store/schema.py)")
        missing = [f.name for f in self.datasets if f.required and "<r>" not in f.name
                   and not any(f.matches(n) for n in names)]
        if missing:
            raise ValueError(f"{path}: stage {self.name!r} needs dataset {missing[0]!r}")


COMMON_ATTRS = (
    Field("schema_version", "int", "", "version of this format (artifacts of another version are rebuilt)"),
    Field("stage", "str", "", "the stage that wrote the file"),
    Field("config", "JSON", "", "the stage's settings"),
    Field("inputs", "JSON", "", "digests (SHA-256) of the inputs: upstream artifacts or image files"),
    Field("code_version", "str", "", "package and stage code version (part of the cache key)"),
    Field("created", "str", "", "creation time, ISO 8601"),
    Field("made_by", "JSON", "", "the run that made it: the Prefect flow run the user started (`flow_run`) and "
                                 "its deployment (`deployment`, when it has one); absent outside a Prefect run",
          required=False),
    Field("complete", "bool", "", "written last: a file without it is a partial write"),
)

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("extract", "2", "patch tokens and image embeddings of every readable image", datasets=(
        Field("tokens", "float32", "(layers, N, 1+L, C)", "tokens of each chosen block; index 0 is the class token "
                                                         "(tiled runs: one row per tile, N x T rows, image-major)"),
        Field("embeddings", "float32", "(N, D)", "L2-normalised image embeddings (RsCIN's similarity); tiled runs: "
                                                 "the mean of the image's tile embeddings, renormalised"),
        Field("masks", "uint8", "(N, S, S) or (N, H, W)", "ground-truth masks resized to S and binarised (0/1; zeros "
                                                          "if none); tiled runs: at the images' full resolution H x W"),
        Field("names", "str", "(N,)", "image names relative to the category folder"),
        Field("paths", "str", "(N,)", "image paths relative to the dataset root (attribute `root`; absolute in "
                                      "artifacts of earlier versions)"),
        Field("digests", "str", "(N,)", "SHA-256 of each image file"),
        Field("defect_types", "str", "(N,)", "defect folder of each image ('good' for normal MVTec images)"),
        Field("labels", "int64", "(N,)", "1 anomalous, 0 normal, -1 unknown"),
        Field("has_mask", "bool", "(N,)", "whether a ground-truth mask exists"),
        Field("skipped", "str", "(n_skipped,)", "unreadable files that were left out, with the reason"),
        Field("tile_source", "int64", "(N x T,)", "tiled runs (config `tiles` [R, C], T = R x C tiles per image, "
                                                  "`tile_overlap`): the image (index into names) of each token row",
              required=False),
        Field("tile_boxes", "int64", "(N x T, 4)", "tiled runs: each row's tile box in its image's pixels (top, left, "
                                                   "bottom, right; bottom and right exclusive)", required=False),
    ), attrs=(
        Field("backbone", "str", "", "the backbone as loaded (model, weights, blocks, patch size)"),
        Field("mask_rule", "str", "", "how resized masks were binarised: truncate or nonzero"),
        Field("n_skipped", "int", "", "number of unreadable files left out"),
        Field("root", "str", "", "the dataset root the images were read from, as the person gave it (a record: "
                                 "not in the key)"),
        Field("artifacts", "str", "", "the artifacts folder as the person gave it: with it, a relative `root` is "
                                      "found again from where the artifacts root lies now (a record)",
              required=False),
        Field("model_files", "JSON", "", "where the local model and checkpoint files lay, relative to this file's "
                                         "folder: a hint (the key holds their names and SHA-256; a moved file is "
                                         "found again by its digest)", required=False),
    )),
    Stage("aggregate", "1", "LNAMD features of one degree r", datasets=(
        Field("features", "float32", "(layers, N, L, C)", "LayerNorm, r x r neighbourhood mean, L2 normalisation"),
    )),
    Stage("score", "1", "MSM patch scores of one degree r", datasets=(
        Field("scores", "float64", "(layers, N, L)", "mean of each patch's smallest nearest-patch distances to "
                                                     "the other images (tiled runs: per tile row; config "
                                                     "`tile_mixing`: aligned or all)"),
        Field("votes", "float32", "(layers, S, n, n, L)",
              "each row's nearest-patch distance to each row of its set (S sets of n rows: per tile position, "
              "or one; +inf against itself and, tile mixing all, its own image's tiles), kept when they are "
              "small enough (musc.stages.score.KEPT_VOTES_BYTES) and divide_num is 1: a pool made from the "
              "run reuses them", required=False),
    ), attrs=(
        Field("msm_precision", "str", "", "the precision the tiles ran in (the config records fp32 for the "
                                          "exact ones: fp32 and the bf16 screen give the same scores)"),
    )),
    Stage("classify", "1", "anomaly maps and image scores", datasets=(
        Field("patch_map", "float64", "(N, L)", "patch scores averaged over layers and degrees (tiled runs: one row "
                                                "per tile, as the extract's tokens)"),
        Field("maps", "float64", "(N, S, S) or (N, H, W)", "anomaly maps: the patch map upsampled bilinearly to S; "
                                                           "tiled runs: each tile's map upsampled to its box and "
                                                           "stitched at the image's full resolution H x W (overlaps "
                                                           "averaged)"),
        Field("image_scores_raw", "float64", "(N,)", "maximum of each map"),
        Field("image_scores", "float32|float64", "(N,)", "image scores after RsCIN (the final scores)"),
    )),
    Stage("evaluate", "4", "metrics, thresholds and decisions (reports in the folder beside it)", datasets=(
        Field("metrics", "group of float64", "()", "each metric as a fraction; NaN where not computed"),
        Field("ranking", "int64", "(N,)", "image indices, most anomalous first"),
        Field("decisions", "int8", "(N,)", "1 anomalous, 0 normal, at the image threshold"),
    ), attrs=(
        Field("metrics", "JSON", "", "the metrics, null where not computed"),
        Field("notes", "JSON", "", "why a metric group was not computed"),
        Field("threshold", "float", "", "image-score threshold"),
        Field("threshold_rule", "str", "", "how the image threshold was chosen"),
        Field("pixel_threshold", "float", "", "anomaly-map threshold of the binary masks"),
        Field("pixel_threshold_rule", "str", "", "how the pixel threshold was chosen"),
        Field("category", "str", "", "category name"),
        Field("dataset", "str", "", "dataset layout"),
        Field("outputs", "str", "", "the folder of reports and figures when written, relative to the artifact's "
                                     "folder (a record only: readers use the folder beside the artifact)"),
        Field("pixel_resolution", "JSON", "", "tiled runs: [height, width] per image of the maps and masks the "
                                              "pixel metrics and figures used (the images' full resolution, "
                                              "reduced by an integer factor above 1024 x 1024 pixels)"),
    )),
    Stage("pool", "5", "a reference pool of one category: LNAMD features of earlier images, what they were "
                       "made and scored with (config: settings = category, backbone/feature settings with image "
                       "size, layers and tiling, r_list, score: the MSM settings, part_size [H, W]: tiled "
                       "pools; max_images)", datasets=(
        Field("features_r<r>", "float32", "(layers, P, L, C) or (layers, P x T, L, C)",
              "LNAMD features of degree r of the pool images, a row per tile (image-major) in a tiled pool "
              "(chunks of one row and layer: read block by block)"),
        Field("names", "str", "(P,)", "category/name of each pool image"),
        Field("digests", "str", "(P,)", "SHA-256 of each pool image's file (a run is added once)"),
        Field("added", "float64", "(P,)", "when each image was added (Unix time)"),
        Field("sources", "str", "(P,)", "where each image came from: 'run <evaluate digest[:12]>' or "
                                        "'day <name> (verdict good)' / 'day <name> (decided normal)'",
              required=False),
        Field("self_scores", "float64", "(P,) or (0,)", "each pool image's score against the rest of the pool "
                                                        "(calibrates the threshold; empty below 2 images)"),
    ), attrs=(
        Field("model_files", "JSON", "", "where the pool's model and checkpoint files lay, relative to the pool's "
                                         "folder: a hint (they are found by their SHA-256: also beside the pool, in "
                                         "$MUSC_MODELS, or given with --backbone)", required=False),
        Field("pool_id", "str", "", "the pool's identity: made when the pool is created, kept by every addition "
                                    "and removal (a moved, copied or symlinked pool is the same pool; a pool made "
                                    "anew at the same path is another); verdicts and learnt thresholds belong to it"),
    )),
    Stage("pool_votes", "1", "what a pool keeps to grow at the cost of its new comparisons (<pool>.votes.h5 "
                             "beside it; config: settings, the pool's): the votes among its images, which the "
                             "calibration reduces", datasets=(
        Field("votes_r<r>", "float32", "(layers, S, n, n, L)",
              "each row's nearest-patch distance to each row of its set (as the score stage's votes), the pool's "
              "rows in the pool's order"),
        Field("digests", "str", "(P,)", "the SHA-256 of the pool's images in order: the votes describe the pool "
                                        "holding exactly these"),
    )),
    Stage("guard", "1", "the systematic-defect guard of a run (musc run --reference POOL): each image of the "
                        "run scored against a reference pool only and decided with the pool's rule (config: the "
                        "rule; inputs: the evaluate and pool digests)", datasets=(
        Field("names", "str", "(N,)", "image names relative to the category folder (the run's order)"),
        Field("pool_scores", "float64", "(N,)", "each image's score against the pool only"),
        Field("pool_decisions", "int8", "(N,)", "1 anomalous, 0 normal, at the pool's threshold"),
    ), attrs=(
        Field("threshold", "float", "", "the pool's image-score threshold"),
        Field("threshold_rule", "str", "", "how it was chosen (fixed, or calibrated on the pool)"),
        Field("pool", "str", "", "the pool file (a record: the key holds its digest)"),
        Field("pool_size", "int", "", "images in the pool"),
    )),
    Stage("features", "1", "a new part's LNAMD features, made with a pool's backbone and settings (the line: "
                           "one artifact per part; config: the pool's feature settings, r_list and, tiled, "
                           "part_size; inputs: the SHA-256 of the part's image file)", datasets=(
        Field("features_r<r>", "float32", "(layers, T, L, C)", "LNAMD features of degree r: one row (T = 1), or "
                                                               "one row per tile of a tiled pool's parts"),
        Field("picture", "uint8", "(h, w, 3)", "the part's picture at the resolution its overlay is drawn at (the "
                                               "map's: S x S; tiled: the full resolution, reduced above 1024 x "
                                               "1024 pixels)"),
    ), attrs=(
        Field("size", "JSON", "", "[height, width] of the part's image in pixels"),
        Field("backbone", "str", "", "the backbone as loaded (model, weights, blocks, patch size)"),
    )),
    Stage("pool_score", "1", "a part scored against a pool only, as it would score in one batch of the pool "
                             "and itself (config: the pool's MSM settings and image size; inputs: the part's "
                             "features and the pool's content digest)", datasets=(
        Field("patch_scores", "float64", "(degrees, layers, T, L)", "MSM patch scores against the pool"),
        Field("map", "float32", "(S, S) or (H, W)", "the anomaly map (tiled: the tiles' maps stitched at the "
                                                    "part's full resolution)"),
        Field("score", "float64", "()", "the part's score: the maximum of its map"),
    ), attrs=(
        Field("pool_id", "str", "", "the identity of the pool it was scored against"),
        Field("pool_size", "int", "", "images in the pool"),
        Field("map_min", "float", "", "the map's minimum"),
        Field("map_max", "float", "", "the map's maximum"),
    )),
    Stage("decide", "1", "the decisions of a day's parts (or of a score-new output folder's): each part's score "
                         "against the pool and its decision at the rule's threshold (config: the rule; inputs: "
                         "the parts' pool_score digests, the pool's digest and the rule's evidence)", datasets=(
        Field("parts", "str", "(P,)", "the SHA-256 of each part's image file, ascending"),
        Field("scores", "float64", "(P,)", "each part's score against the pool"),
        Field("decisions", "int8", "(P,)", "1 anomalous, 0 normal, at the threshold"),
    ), attrs=(
        Field("threshold", "float", "", "the image-score threshold"),
        Field("threshold_rule", "str", "", "how it was chosen (fixed, calibrated on the pool, or reviewed)"),
        Field("map_range", "JSON", "", "[low, high]: the lowest and highest value of the parts' maps (the day's one "
                                       "colour scale)"),
        Field("pool_id", "str", "", "the identity of the pool"),
        Field("pool_size", "int", "", "images in the pool"),
        Field("evidence", "JSON", "", "the reviewed rule: the verdict history and its counts of defect and good "
                                      "verdicts it learnt from"),
    )),
    Stage("part", "1", "one batch or tile of a long stage, kept for resuming", open_datasets=True),
)}


def stage_schema(stage: str) -> Stage:
    try:
        return STAGES[stage]
    except KeyError:
        raise ValueError(f"stage: unknown stage {stage!r} (known: {', '.join(STAGES)})") from None


def paths_text() -> str:
    """How outputs name paths: the rule as ``musc/store/naming.py`` states it (its docstring, less its
    first paragraph)."""
    import inspect

    from . import naming
    return inspect.cleandoc(naming.__doc__).split("\n\n", 1)[1].strip()


def markdown() -> str:
    """The format as a Markdown document (docs/ARTIFACTS.md)."""
    lines = ["# Artifact format", "",
             f"Generated from `musc/store/schema.py` (schema version {SCHEMA_VERSION}); do not edit by hand.", "",
             "Every artifact is `<stage>/<key>.h5` with a manifest `<key>.json` (SHA-256 and size) and, once a "
             "command has checked the SHA-256, a record `.<key>.h5.verified` of the two files' identity then "
             "(device, inode, size, modification and status-change times), written only from a fresh hash "
             "made once those times were older than the file system's timestamp resolution (2 s for "
             "whole-second times, 50 ms otherwise): a later command trusts an unchanged "
             "artifact without reading it again, and any write, replacement or copy makes it check again. "
             "Shapes: N images, L patches per image, C channels, S image size, P pool images; tiled runs: "
             "T tiles per image, H x W the images' full resolution.", "",
             "Each dataset describes itself for a person who opens the file without musc-flow (h5dump -A, "
             "HDFView, h5py): the attribute `description` holds its meaning below, `shape` its declared "
             "shape, and its axes are named where the shape is one tuple (h5py's `dims`, HDF5 dimension "
             "labels). `musc inspect FILE --json` prints the same as one JSON document, with each input "
             "resolved to the file it is now.", "",
             "The key is a hash of exactly what the artifact records: its code version, its `config` and its "
             "`inputs` (musc/stages/key.py), so an artifact whose record does not give the key it sits under "
             "is not used. Where an artifact root's files lie: musc/store/catalog.py.", "",
             "## Paths in outputs", "", paths_text(), "",
             "## Attributes of every artifact", "", "| attribute | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {f.dtype} | {f.meaning} |" for f in COMMON_ATTRS]
    for stage in STAGES.values():
        if stage.open_datasets:
            continue
        lines += ["", f"## {stage.name}: {stage.meaning}", "", "| dataset | dtype | shape | meaning |",
                  "|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.dtype} | {f.shape} | {f.meaning} |" for f in stage.datasets]
        if stage.attrs:
            lines += ["", "| attribute | type | meaning |", "|---|---|---|"]
            lines += [f"| `{f.name}` | {f.dtype} | {f.meaning} |" for f in stage.attrs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
