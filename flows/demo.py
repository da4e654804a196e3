"""The demo: a generated MVTec-style dataset scored end to end with a small seeded backbone."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from musc.inputs.backbone_spec import DEMO_BACKBONE
from musc.inputs.synthetic import make_dataset

from .dataset import dataset_flow

DEMO_CONFIG = {"backbone": DEMO_BACKBONE, "pretrained": "none", "image_size": 128, "layers": [0, 1, 2, 3],
               "batch_size": 8, "device": "cpu"}


@flow(name="musc-demo", flow_run_name="demo: generated mvtec_ad", log_prints=True)
def demo_flow(data: str = "demo_data", artifacts: str = "artifacts", seed: int = 0) -> dict:
    """The demo: a generated MVTec-style dataset scored end to end with a small seeded backbone.

    Args:
        data: The folder the synthetic dataset is generated in (kept and reused).
        artifacts: The folder the artifacts and reports are written to.
        seed: The seed of the generated dataset.
    """
    root = Path(data)
    if not (root / "fabric" / "test").is_dir():
        make_dataset(root, seed=seed)
    result = dataset_flow("mvtec_ad", str(root), None, DEMO_CONFIG, artifacts)
    print(result["summary"])  # the run the user started says what its subflows found
    return result
