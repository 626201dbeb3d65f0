#!/usr/bin/env bash
# Fresh-machine setup: Fashion-MNIST from Debian (if missing), a virtualenv in .venv, autoprune installed
# editable. `bash scripts/setup.sh dev` adds the test extra and Debian's chromium (the report's browser test).
# Needs only python3, pip and apt.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# -qq: errors only (pip's warnings here are about this machine's package indexes, not about autoprune)
.venv/bin/python -m pip install -qq --upgrade pip
extra=""; [ "${1:-}" = "dev" ] && extra="[dev]"
.venv/bin/python -m pip install -qq -e ".${extra}"
if [ "${1:-}" = "dev" ] && ! command -v chromium >/dev/null; then  # the report's browser test (tests/test_report.py)
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup: chromium could not be installed; tests/test_report.py skips its browser test" >&2
fi
if [ "${1:-}" = "dev" ]; then
  echo "autoprune installed with the test extra: run .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup"
else
  echo "autoprune installed: run .venv/bin/autoprune search --budget 50%FLOPs resnet20"
fi
