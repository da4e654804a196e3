#!/usr/bin/env bash
# The GPU path in one command, on a machine with a CUDA device:
#   bash bench/gpu_check.sh            # the gpu tests (deviations printed), then the paper-settings benchmark
#   IMAGES=50 bash bench/gpu_check.sh  # a shorter benchmark
# Without CUDA the tests are skipped (with the reason) and the benchmark is not run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PREFECT_SERVER_ANALYTICS_ENABLED=false
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
"$PYTHON" -m pytest -q -s -rs -m gpu tests/test_gpu.py -p no:cacheprovider
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PYTHON" bench/gpu_paper.py --images "${IMAGES:-200}" --device cuda --msm-precision "${MSM_PRECISION:-fp32}"
else
  echo "no CUDA device: the paper-settings benchmark (bench/gpu_paper.py) needs one; skipped"
fi
