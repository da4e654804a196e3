"""The evaluate stage for 65 images at 256 px: first drawing, a rerun into the same folder, and one
overlay drawn the old way (a matplotlib figure) against the Pillow one, measured in one run.

    python bench/evaluate.py [--images 65] [--image-size 256]

The upstream artifacts (demo backbone, seeded random weights, one degree) are built first and
are not timed. Times are wall-clock on this machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matplotlib_overlay(image, anomaly_map, path, mask, vmin, vmax, title) -> None:
    """The previous drawing: one matplotlib figure per overlay (for the comparison only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(image)
    axes[1].imshow(image)
    heat = axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    if mask is not None and mask.any():
        axes[1].contour(mask, levels=[0.5], colors="white", linewidths=1)
    axes[1].set_title(title, fontsize=8)
    for axis in axes:
        axis.axis("off")
    fig.colorbar(heat, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def timed_parts() -> dict:
    """Accumulate the time of the evaluate stage's main parts (patched in place, for this run only)."""
    from musc.outputs import figures, reports
    spent: dict[str, float] = {}

    def wrap(module, name, label):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - begin
        setattr(module, name, timed)
    wrap(reports, "evaluate", "metrics and thresholds")
    wrap(figures, "render_pictures", "overlays and thumbnails (in the background)")
    wrap(figures, "save_binary_masks", "binary masks")
    wrap(figures, "save_histograms", "histograms")
    wrap(figures, "save_curves", "ROC/PR figures")
    return spent


def build_upstream(data: Path, artifacts: Path, image_size: int):
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.stages import STAGE_SPECS, Run, ensure, walk
    cfg = MuscConfig(backbone=str(ROOT / "musc" / "inputs" / "demo_vit.json"), pretrained="none", image_size=image_size,
                     layers=(0, 1, 2, 3), r_list=(1,), device="cpu", batch_size=8, msm_precision="bf16-fast")
    category = load_category("mvtec_ad", str(data), "fabric")
    built = {}

    def upstream(spec, plans):  # every stage before evaluate, as the graph declares them; evaluate planned only
        if spec.name == "evaluate":
            built["evaluate"] = plans[0]
            return None
        return [ensure(plan)[0] for plan in plans]
    walk(Run(category, cfg, str(artifacts)), upstream)
    return cfg, built["evaluate"], STAGE_SPECS["evaluate"].module.build

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=65)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from musc.inputs.synthetic import make_dataset
    from musc.outputs import figures
    from musc.store import report_folder
    n_defect = (args.images - args.images // 3) // 3
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        make_dataset(scratch / "data", n_good=args.images - 3 * n_defect, n_per_defect=n_defect,
                     size=args.image_size, categories=("fabric",))
        cfg, plan, build_evaluate = build_upstream(scratch / "data", scratch / "artifacts", args.image_size)
        path = Path(plan.path)
        extract, classify = plan.needs.extract, plan.needs.classify
        spent = timed_parts()
        started = time.perf_counter()
        build_evaluate(path, plan)
        first = time.perf_counter() - started
        first_parts = dict(spent)
        spent.clear()
        overlays = sorted((report_folder(path) / "overlays").glob("*.png"))
        path.unlink()  # as after a corrupt evaluate artifact: rebuilt into the same folder
        started = time.perf_counter()
        build_evaluate(path, plan)
        again = time.perf_counter() - started

        from musc import store
        maps = store.open_artifact(classify["path"]).read("maps", (slice(0, 1),))[0]
        source = store.open_artifact(extract["path"])
        from musc.outputs.evaluation import image_files
        image = np.asarray(figures.load_image(image_files(source)[0]).resize(maps.shape[::-1]))
        mask = source.read("masks", (slice(0, 1),))[0]
        times = {}
        for name, draw in (("pillow", figures.save_overlay), ("matplotlib", matplotlib_overlay)):
            draw(image, maps, scratch / f"{name}.png", mask, float(maps.min()), float(maps.max()), "x")  # warm-up
            started = time.perf_counter()
            for _ in range(5):
                draw(image, maps, scratch / f"{name}.png", mask, float(maps.min()), float(maps.max()), "x")
            times[name] = (time.perf_counter() - started) / 5
    print(f"evaluate, {len(overlays)} images at {args.image_size} px: {first:.2f} s (every overlay drawn); "
          f"rerun into the same folder: {again:.2f} s (no overlay redrawn)")
    for label, parts in (("first", first_parts), ("rerun", dict(spent))):
        print(f"  {label}: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts.items())
              + " (the rest: reading artifacts, CSVs, report, writing the artifact)")
    print(f"one overlay: Pillow {times['pillow'] * 1e3:.1f} ms, matplotlib figure {times['matplotlib'] * 1e3:.1f} ms "
          f"-> {times['matplotlib'] / times['pillow']:.1f}x")


if __name__ == "__main__":
    main()
