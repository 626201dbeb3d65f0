#!/usr/bin/env bash
# Fresh-machine setup: Fashion-MNIST from Debian (if missing), a virtualenv in .venv, autoprune installed
# editable. `bash scripts/setup.sh dev` adds the test extra. Needs only python3, pip and apt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extra=""; [ "${1:-}" = "dev" ] && extra="[dev]"
.venv/bin/python -m pip install -q -e ".${extra}"
