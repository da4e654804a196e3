"""The pixel metrics' walk in a process of its own (``musc.outputs.evaluation.pixel_curves_of``):
reads a request (JSON on stdin: the masks' and the maps' file and dataset, the images that count),
walks the stored masks and maps an image at a time (``PixelCurves.of``) and writes the curves,
pickled, on stdout. Imports numpy, h5py and scikit-image, never torch."""
from __future__ import annotations

import json
import pickle
import sys

from ..method.metrics import PixelCurves
from .evaluation import StoredImages


def main() -> None:
    request = json.loads(sys.stdin.read())
    curves = PixelCurves.of(StoredImages(*request["masks"]), StoredImages(*request["maps"]), request["images"])
    sys.stdout.buffer.write(pickle.dumps(curves, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
