"""Peak resident memory of scoring new images against a large reference pool.

Writes a synthetic pool file (random L2-normalised features, P images of L patches and C channels,
for the given layers and degrees), then scores M new images against it in a fresh process with the
pool service's own scoring path (musc.reference_pool: each new image against the pool only, blocks
of pool images read from the HDF5 file, votes by musc.method.msm) and prints that process's peak
RSS, time and time per part.

    python bench/pool_memory.py                                  # 200 images, L=1369, C=1024, 1 layer, 1 degree
    python bench/pool_memory.py --layers 4 --degrees 3           # the paper's full settings (13 GB pool file)
    python bench/pool_memory.py --pool-images 50 --tiles 2x2 --mixing all   # a tiled pool (200 tile rows)

Backbone extraction is left out (no weights offline): new images are random features too.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_pool(path: Path, args) -> None:
    from musc.reference_pool import Images, PoolSettings, write_pool
    from musc.inputs.config import ScoreSettings
    rng = np.random.default_rng(0)
    tiles = tile_grid(args.tiles)

    def read(r, layer, indices):  # the rows of those images: one each, or their tiles'
        block = rng.standard_normal((len(indices) * tiles[0] * tiles[1], args.patches, args.channels), dtype=np.float32)
        return block / np.linalg.norm(block, axis=-1, keepdims=True)
    degrees = tuple(range(1, 2 * args.degrees, 2))
    features = {"image_size": 518, "layers": list(range(args.layers))}
    if args.tiles:
        features.update(tiles=list(tiles), tile_overlap=0.0)
    settings = PoolSettings("synthetic", features, degrees, ScoreSettings(tile_mixing=args.mixing if args.tiles else None),
                            (1036, 1036) if args.tiles else None)
    names = [f"synthetic/{i:04d}" for i in range(args.pool_images)]
    write_pool(path, settings, [Images(names, names, np.zeros(len(names)), read, (args.patches, args.channels))],
               args.pool_images, {}, calibrate=False)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry over the
    parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tile_grid(text: str | None) -> tuple[int, int]:
    return (1, 1) if not text else tuple(int(n) for n in text.lower().split("x"))


def score(path: str, n_new: int, block: int) -> dict:
    """Score n_new random images against the pool exactly as score_new_images does after extraction:
    a chunk of parts at a time (``PoolSettings.chunks``), each against the pool only (``PoolFile.score``)."""
    import dataclasses

    import torch
    from musc.reference_pool import PoolFile
    baseline = peak_rss_mb()
    started = time.perf_counter()
    pool = PoolFile(path)
    verified = time.perf_counter() - started
    pool.settings = dataclasses.replace(pool.settings, score=dataclasses.replace(pool.settings.score, block_size=block))
    n_patches, channels = pool.feature_shape
    generator = torch.Generator().manual_seed(1)
    for start, stop in pool.settings.chunks(n_new):
        rows = (stop - start) * pool.settings.tiles_per_image
        for r in pool.settings.r_list:
            for layer in range(len(pool.settings.layers)):
                new = torch.nn.functional.normalize(torch.randn(rows, n_patches, channels, generator=generator), dim=-1)
                pool.score(new, r, layer)  # each new part against the pool only
    seconds = time.perf_counter() - started
    return {"peak_rss_mb": peak_rss_mb(), "after_imports_mb": baseline, "seconds": seconds,
            "verify_seconds": verified, "seconds_per_part": (seconds - verified) / n_new}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-images", type=int, default=200)
    parser.add_argument("--patches", type=int, default=1369)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--degrees", type=int, default=1)
    parser.add_argument("--new", type=int, default=4, help="new images scored together")
    parser.add_argument("--block", type=int, default=8, help="pool images read per block")
    parser.add_argument("--tiles", default=None, help="RxC: a tiled pool (R x C feature rows per image)")
    parser.add_argument("--mixing", default="aligned", choices=("aligned", "all"), help="a tiled pool's tile mixing")
    parser.add_argument("--dir", default=None, help="where the pool file is written (default: a temporary folder)")
    parser.add_argument("--score-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score_only:
        print(json.dumps(score(args.score_only, args.new, args.block)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "pool.h5"
        started = time.perf_counter()
        make_pool(path, args)
        size = path.stat().st_size / 2**30
        tiled = f", {args.tiles} tiles ({args.mixing})" if args.tiles else ""
        print(f"pool: {args.pool_images} images{tiled}, L={args.patches}, C={args.channels}, {args.layers} layer(s), "
              f"{args.degrees} degree(s): {size:.2f} GiB file, written in {time.perf_counter() - started:.0f} s")
        done = subprocess.run([sys.executable, __file__, "--score-only", str(path), "--new", str(args.new),
                               "--block", str(args.block)], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"scoring {args.new} new image(s) against it (block {args.block}): peak RSS {result['peak_rss_mb']:.0f} MB "
          f"({result['after_imports_mb']:.0f} MB after imports), {result['seconds']:.0f} s "
          f"(of which {result['verify_seconds']:.0f} s verifying the pool's SHA-256); "
          f"{result['seconds_per_part']:.2f} s per part")
    print(f"the whole pool would be {size * 1024:.0f} MB in memory; peak RSS is "
          f"{result['peak_rss_mb'] / (size * 1024):.2f} of it")


if __name__ == "__main__":
    main()
