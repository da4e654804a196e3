#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (slow tests included; arguments go to pytest).
# The quick loop while working, without the subprocess, server and browser tests and the longer runs:
#   .venv/bin/python -m pytest -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/test_ui.py) drive Debian's Chromium through chromedriver, and the artifact
# tests read files with h5dump as a person would (hdf5-tools). Installed here when missing and we may
# (root, apt-get); elsewhere those tests are skipped and say why.
if { [ ! -x /usr/lib/chromium/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v h5dump >/dev/null; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium, chromium-driver and hdf5-tools (apt-get) for the browser and h5dump tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver hdf5-tools >/dev/null \
    || echo "warning: could not install chromium or hdf5-tools; the browser and h5dump tests will be skipped"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q "$@"
