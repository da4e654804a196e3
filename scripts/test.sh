#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite (slow tests included; arguments go to pytest).
# The quick loop while working, without the subprocess, server and browser tests and the longer runs:
#   .venv/bin/python -m pytest -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/test_ui.py) drive Debian's Chromium through chromedriver. Installed here
# when missing and we may (root, apt-get); elsewhere those tests are skipped and say why.
if { [ ! -x /usr/lib/chromium/chromium ] || [ ! -x /usr/bin/chromedriver ]; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (apt-get) for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "warning: could not install chromium; the browser tests will be skipped"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q "$@"
