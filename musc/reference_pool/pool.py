"""The pool file: a first-class artifact (stage ``pool`` in musc/store/schema.py).

It holds the LNAMD features of earlier images, per degree (layers, P, L, C), or (layers, P x T, L, C)
for a tiled pool of T tiles per part (rows image-major), chunked one row and layer at a time so
that scoring reads it block by block; the name and content digest (SHA-256) of each image, when it
was added and where it came from (``sources``: a run or a day, with its verdict); the leave-one-out
score of each pool image against the rest of the pool (the calibration of the decision threshold);
and, in its config, what every image in it was made with (``PoolSettings``): category, backbone and
feature settings (tiling included), image size, layers, degrees, scoring settings, and a tiled
pool's part size. Images made otherwise are refused, never mixed in.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import h5py
import numpy as np
import torch

from ..store import open_artifact, remove_artifact, write_artifact
from ..store.naming import link
from ..store.schema import stage_schema
from ..inputs.backbone_spec import recorded_model_files
from ..inputs.config import ScoreSettings
from ..method.blocks import image_blocks, tile_sets
from ..method.tiling import ImageTiling
from ..stages.faults import fault_point
from .errors import PoolError
from . import votes
from .scoring import BlockReader, image_scores, part_scores, read_rows, rows_reader, set_scores

DEFAULT_MAX_IMAGES = 200
ROWS_PER_CHUNK = 64          # feature rows (images, or tiles) scored together against a pool
VOTES_AT_ONCE = 64 * 256     # query rows x pool rows of votes held at once (x L: 90 MB at L = 1369)


@dataclass(frozen=True)
class PoolSettings:
    """What the pool's images were made and scored with; new images are extracted and scored the same way."""
    category: str
    features: dict[str, Any]          # the extract stage's backbone settings (backbone, weights, image_size, layers, ...)
    r_list: tuple[int, ...]
    score: ScoreSettings = ScoreSettings()   # how its images are scored (the batch's MSM settings)
    part_size: tuple[int, int] | None = None  # tiled pools: (height, width) of the parts the tiles are cut from

    @property
    def image_size(self) -> int:
        return int(self.features["image_size"])

    @property
    def tiling(self) -> ImageTiling | None:
        """Where a part's tiles lie (tiled pools: ``features.tiles``, ``tile_overlap``), or None."""
        grid = self.features.get("tiles")
        if grid is None:
            return None
        return ImageTiling.of_size(*self.part_size, grid, self.features.get("tile_overlap"))

    @property
    def tiles_per_image(self) -> int:
        grid = self.features.get("tiles")
        return 1 if grid is None else int(grid[0]) * int(grid[1])

    def rows(self, images: np.ndarray) -> np.ndarray:
        """The feature rows of images (indices, increasing): one per image, or its T tiles' rows."""
        count = self.tiles_per_image
        return (np.asarray(images, dtype=np.int64)[:, None] * count + np.arange(count)).ravel()

    def chunks(self, n_images: int) -> list[tuple[int, int]]:
        """[start, stop) ranges of images scored together against the pool (new parts, a guarded
        run's images): ``ROWS_PER_CHUNK`` feature rows at most (one image at least), so that their
        features are never all held, whatever the count of images or tiles."""
        return image_blocks(n_images, max(1, ROWS_PER_CHUNK // self.tiles_per_image))

    def sets(self, n_images: int) -> list[tuple[list[int], int]]:
        """The sets n images' rows are scored in (``tiles.tile_sets``: untiled, one; per tile
        position, or one of all tiles)."""
        return tile_sets(range(n_images), self.tiles_per_image, self.score.tile_mixing or "aligned")

    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.features["layers"]]

    def to_config(self) -> dict[str, Any]:
        return {"category": self.category, "features": dict(self.features), "r_list": [int(r) for r in self.r_list],
                "score": self.score.recorded(),
                **({"part_size": [int(n) for n in self.part_size]} if self.part_size is not None else {})}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PoolSettings":
        size = config.get("part_size")
        return cls(str(config["category"]), dict(config["features"]), tuple(int(r) for r in config["r_list"]),
                   ScoreSettings.from_recorded(config["score"]), None if size is None else tuple(int(n) for n in size))

    def differences(self, other: "PoolSettings") -> list[str]:
        """'field: theirs (the pool: ours)' for every setting that decides the scores and differs."""
        mine, theirs = self.score.recorded(), other.score.recorded()
        found = []
        for name, ours, others in (("category", self.category, other.category), ("r_list", self.r_list, other.r_list),
                                   ("part_size", *(_size_text(s) for s in (self.part_size, other.part_size))),
                                   *((f"features.{k}", self.features.get(k), other.features.get(k))
                                     for k in sorted(set(self.features) | set(other.features))),
                                   *((k, mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs))
                                     if k not in ("divide_num", "seed"))):
            if ours != others:
                found.append(f"{name}: {others!r} (the pool: {ours!r})" if name != "part_size"
                             else f"{name}: {others} (the pool: {ours})")
        return found


def _size_text(size: tuple[int, int] | None) -> str:
    """A part size (height, width) as people read it: width x height pixels."""
    return "whole images" if size is None else f"{size[1]} x {size[0]} pixels"


@dataclass
class Images:
    """Images to put in a pool: names, content digests, when added, and a reader of their features
    ``read(r, layer, indices) -> (n, L, C)``: the rows of those images (n x T rows, image-major, for
    tiled settings of T tiles per image)."""
    names: list[str]
    digests: list[str]
    added: np.ndarray
    read: Callable[[int, int, np.ndarray], np.ndarray]
    shape: tuple[int, int] = field(default=(0, 0))  # (L, C)
    sources: list[str] = field(default_factory=list)  # where each came from: "run <digest[:12]>", "day <name> (...)"
    votes: Callable[[int, int, int, np.ndarray], np.ndarray | None] | None = None  # their kept votes (votes.py)

    def __post_init__(self) -> None:
        if not self.sources:  # images made without a record of their origin (tests, tools)
            self.sources = ["unrecorded"] * len(self.names)
        if len(self.sources) != len(self.names):
            raise PoolError(f"sources: {len(self.sources)} given for {len(self.names)} images (one per image)")

    def __len__(self) -> int:
        return len(self.names)


class PoolFile:
    """A pool artifact opened for reading: a snapshot. The file is opened once and every read (its
    record, names, calibration and the features, block by block) goes through that handle, so a
    ``pool add`` that replaces the file meanwhile (an atomic rename) cannot mix two versions: this
    reader keeps the file it verified. ``id``: the pool's identity (``pool_id``), ``digest``: its
    content's (the SHA-256 of the file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_pool_path(self.path)
        real = self.path.resolve()  # a pool reached through a symlink: its file and manifest are the target's
        for _ in range(3):  # the file replaced between opening and verifying: open the new one
            handle = h5py.File(real, "r")
            artifact = open_artifact(real, "pool")
            if os.fstat(handle.id.get_vfd_handle()).st_ino == os.stat(real).st_ino:
                break
            handle.close()
        else:
            raise PoolError(f"{self.path}: the pool keeps changing while it is opened; try again")
        self._file = handle
        if artifact.attrs.get("code_version") != stage_schema("pool").code_version:
            raise PoolError(f"{self.path}: a pool written by another version of musc-flow "
                            f"({artifact.attrs.get('code_version') or 'unknown'}); rebuild it with musc pool add")
        self.digest = artifact.digest
        self.id = str(artifact.attrs["pool_id"])
        self.settings = PoolSettings.from_config(artifact.config["settings"])
        self.max_images = int(artifact.config["max_images"])
        self.names = [v.decode() if isinstance(v, bytes) else str(v) for v in handle["names"][()]]
        self.digests = [v.decode() if isinstance(v, bytes) else str(v) for v in handle["digests"][()]]
        self.added = handle["added"][()]
        self.sources = ([v.decode() if isinstance(v, bytes) else str(v) for v in handle["sources"][()]]
                        if "sources" in handle else ["unrecorded"] * len(self.names))
        self.self_scores = handle["self_scores"][()]
        self.feature_shape = tuple(handle[f"features_r{self.settings.r_list[0]}"].shape[2:])
        self.model_files = recorded_model_files(artifact.attrs.get("model_files"), real.parent)  # the real file's folder: additions write them from there

    def __len__(self) -> int:
        return len(self.names)

    def reader(self, r: int, layer: int, rows: Sequence[int] | None = None) -> BlockReader:
        """Block reader of the pool's features of one degree and layer: every row, or ``rows``."""
        features = self._file[f"features_r{r}"]
        return rows_reader(lambda selection: features[layer, selection], rows)

    def ref(self) -> dict[str, str]:
        """What a stage's plan keeps of the pool (plain data): its path as given, identity and digest."""
        return {"path": str(self.path), "id": self.id, "digest": self.digest}

    def score(self, new: torch.Tensor, r: int, layer: int, chosen: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        """MSM patch scores (rows, L) of new parts' features (rows, L, C) of one degree and layer,
        each part against the pool only (``part_scores``), set by set: a tiled pool scores a part's
        tile against the pool's tiles of its position (``aligned``), or against all of them (``all``).
        ``chosen``: each part against those pool images only (``retrieval.nearest``, pool_top_k)."""
        if chosen is not None:
            from .retrieval import retrieved_scores
            return retrieved_scores(self, new, r, layer, chosen)
        count = self.settings.tiles_per_image
        scores = torch.empty(new.shape[:2], dtype=torch.float64)
        for (new_rows, _), (pool_rows, _) in zip(self.settings.sets(new.shape[0] // count), self.settings.sets(len(self))):
            step = max(1, VOTES_AT_ONCE // len(pool_rows))  # the votes held: step x pool rows x L
            for start in range(0, len(new_rows), step):
                chosen = new_rows[start:start + step]
                scores[chosen] = part_scores(new[chosen], self.reader(r, layer, pool_rows), len(pool_rows),
                                             self.settings.score)
        return scores

    def images(self) -> Images:
        def read(r: int, layer: int, indices: np.ndarray) -> np.ndarray:
            features = self._file[f"features_r{r}"]
            return read_rows(lambda selection: features[layer, selection], self.settings.rows(np.sort(indices)))
        from .votes import kept_votes
        return Images(self.names, self.digests, self.added, read, self.feature_shape, self.sources, kept_votes(self))

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "images": len(self), "max_images": self.max_images,
                "settings": self.settings.to_config(), "feature_shape": list(self.feature_shape),
                "oldest": float(self.added.min()) if len(self) else None,
                "newest": float(self.added.max()) if len(self) else None,
                "self_scores": self.self_scores, "sources": dict(Counter(self.sources))}


def leave_one_out_scores(read: Callable[[int, int, Sequence[int] | None], BlockReader], n_images: int,
                         settings: PoolSettings) -> np.ndarray:
    """Each pool image's score against the rest of the pool (the pool scored as one batch, set by
    set: ``PoolSettings.sets``), read block by block (``read(r, layer, rows)``): the pool's own score
    distribution, which calibrates the decision threshold."""
    if n_images < 2:
        return np.zeros(0)
    count = settings.tiles_per_image
    several = count > 1 and settings.score.tile_mixing == "all"  # a set holds several rows of each image
    per_degree = []
    for r in settings.r_list:
        layers = []
        for layer in range(len(settings.layers)):
            scored = [(rows, set_scores(read(r, layer, rows), len(rows), window, settings.score,
                                        np.asarray(rows) // count if several else None))
                      for rows, window in settings.sets(n_images)]
            scores = torch.empty((n_images * count, scored[0][1].shape[1]), dtype=torch.float64)
            for rows, values in scored:
                scores[rows] = values
            layers.append(scores)
        per_degree.append(torch.stack(layers))
    return image_scores(per_degree, settings.image_size, settings.tiling)


_OPEN: dict[tuple[str, tuple], PoolFile] = {}


def open_pool(path: str | Path, digest: str | None = None) -> PoolFile:
    """The pool at ``path``, opened (and verified) once per process while the file stays the same
    (same inode, size and times): the stages of a day share one snapshot. ``digest``: the content
    a plan was made for; PoolError when the file holds another now (replaced meanwhile)."""
    path = Path(path)
    check_pool_path(path)
    try:
        stat = path.stat()
    except OSError:
        raise PoolError(f"{path}: no such pool file (create it with musc pool add)") from None
    key = (str(path.resolve()), (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    if key not in _OPEN:
        _OPEN.clear()  # one pool at a time stays open (its file handle and record)
        _OPEN[key] = PoolFile(path)
    pool = _OPEN[key]
    if digest is not None and pool.digest != digest:
        raise PoolError(f"{path}: the pool changed while it was in use (digest {pool.digest[:12]}, planned for "
                        f"{digest[:12]}); run again to score against the pool as it is now")
    return pool


def new_pool_id() -> str:
    return uuid.uuid4().hex


class Kept(NamedTuple):
    """What ``write_pool`` kept: the number of images, and the names of those the bound left out
    (oldest first), each with where it came from."""
    count: int
    dropped: list[tuple[str, str]]


def write_pool(path: str | Path, settings: PoolSettings, parts: Sequence[Images], max_images: int,
               inputs: dict[str, str], calibrate: bool = True, pool_id: str | None = None,
               model_files: Sequence[str | Path] = ()) -> Kept:
    """Write the pool made of ``parts`` in order (oldest first), keeping the newest ``max_images``;
    streamed image by image, then calibrated (leave-one-out scores; ``calibrate=False`` leaves them
    empty: a fixed threshold is then needed). ``pool_id``: the pool's identity (a pool written anew:
    a new one). ``model_files``: where its model files lay (a hint beside their digests, named from the
    pool's folder). Returns what was kept and dropped."""
    check_pool_path(path)
    if max_images < 1:
        raise PoolError(f"max_images: must be at least 1, got {max_images}")
    every = [(part, index) for part in parts for index in range(len(part))]
    owners = every[-max_images:]
    dropped = [(part.names[index], part.sources[index]) for part, index in every[:len(every) - len(owners)]]
    n_layers, count = len(settings.layers), settings.tiles_per_image
    n_patches, channels = next((p.shape for p in parts if p.shape != (0, 0)), (0, 0))

    def fill(f: h5py.File) -> None:
        for r in settings.r_list:
            name = f"features_r{r}"
            target = f.create_dataset(name, shape=(n_layers, len(owners) * count, n_patches, channels), dtype="float32",
                                      chunks=(1, 1, n_patches, channels) if owners and n_patches else None)
            for layer in range(n_layers):
                start = 0
                for part in parts:
                    chosen = np.array([i for p, i in owners if p is part], dtype=np.int64)
                    for offset in range(0, chosen.size, 16):
                        indices = chosen[offset:offset + 16]
                        target[layer, start:start + indices.size * count] = part.read(r, layer, indices)
                        start += indices.size * count
            fault_point("pool", r)  # the crash tests: a pool half written

        def reader(r: int, layer: int, rows: Sequence[int] | None = None) -> BlockReader:
            return rows_reader(lambda selection: f[f"features_r{r}"][layer, selection], rows)
        if calibrate and votes.fits(settings, len(owners), n_patches):  # the votes kept reused, only new ones made
            groups = [votes.Group(part.read, part.votes, np.array([i for p, i in owners if p is part], dtype=np.int64))
                      for part in parts]
            scores = votes.grown_calibration(settings, groups, n_patches, path, [p.digests[i] for p, i in owners])
        else:
            remove_artifact(votes.votes_path(path))  # it would describe the pool before this change
            scores = leave_one_out_scores(reader, len(owners) if calibrate else 0, settings)
        f.create_dataset("self_scores", data=scores)

    write_artifact(path, "pool", {"settings": settings.to_config(), "max_images": int(max_images)}, inputs,
                   {"names": np.array([p.names[i] for p, i in owners] or [], dtype=object),
                    "digests": np.array([p.digests[i] for p, i in owners] or [], dtype=object),
                    "added": np.array([p.added[i] for p, i in owners], dtype=np.float64),
                    "sources": np.array([p.sources[i] for p, i in owners] or [], dtype=object)},
                   attrs={"pool_id": pool_id or new_pool_id(), "model_files": json.dumps(list(dict.fromkeys(
                       link(file, Path(path).parent) for file in model_files if Path(file).is_file())))},
                   code_version=stage_schema("pool").code_version,
                   fill=fill)
    return Kept(len(owners), dropped)


def check_pool_path(path: str | Path) -> Path:
    """A pool is a ``.h5`` file: its manifest is the ``.json`` beside it, so any other name (a
    ``.json`` above all, which would be its own manifest) is refused, naming it."""
    path = Path(path)
    if path.suffix != ".h5":
        raise PoolError(f"pool: {path} must be an .h5 file (its manifest is written beside it as "
                        f"{path.with_suffix('.json').name})")
    return path


def check_compatible(pool: PoolFile, settings: PoolSettings) -> None:
    """Refuse (one line) a run of another category or made with other settings than the pool's."""
    if pool.settings.category != settings.category:
        raise PoolError(f"{pool.path}: the pool holds category {pool.settings.category!r}; this run is "
                        f"{settings.category!r} (one pool per category)")
    changed = pool.settings.differences(settings)
    if changed:
        raise PoolError(f"{pool.path}: this run was made with other settings than the pool's: {'; '.join(changed)}")


def check_addition(pool: PoolFile | None, settings: PoolSettings, images: Images) -> None:
    """Refuse (one line) images of another category, other settings, or already in the pool."""
    if pool is None:
        return
    check_compatible(pool, settings)
    if len(pool) and images.shape != (0, 0) and tuple(images.shape) != tuple(pool.feature_shape):
        raise PoolError(f"{pool.path}: features of shape {tuple(images.shape)} (L, C) differ from the pool's "
                        f"{tuple(pool.feature_shape)}")
    already = set(pool.digests)
    repeated = [name for name, digest in zip(images.names, images.digests) if digest in already]
    if repeated:
        raise PoolError(f"{pool.path}: {len(repeated)} of these images are already in the pool (same content, "
                        f"e.g. {repeated[0]}); a run is added once")


def now(count: int) -> np.ndarray:
    return np.full(count, time.time())


def pool_backbone(pool: PoolFile, device: str, places=()):
    """The extraction settings of the pool's images (``ExtractSettings``), with each local model or
    checkpoint file found by the digest the pool recorded (``model_file``): among ``places`` (files
    or folders a person named), at the recorded path, beside the pool, in $MUSC_MODELS; refused in
    one line naming the file when none has that content."""
    from ..inputs.backbone_spec import LOCAL_FILES, model_file
    from ..inputs.config import ExtractSettings
    recorded = dict(pool.settings.features)
    for name in LOCAL_FILES:
        digest = recorded.get(f"{name}_sha256")
        if digest:
            recorded[name] = model_file(name, recorded[name], digest, (*places, *pool.model_files, pool.path.parent),
                                        made=f"the pool {pool.path.name}")
    return ExtractSettings.from_recorded(recorded, device=device, batch_size=4)
