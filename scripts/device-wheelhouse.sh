#!/usr/bin/env bash
# Downloads the wheels of scripts/device-requirements.txt for the GPU machine's Python (3.12,
# x86_64) into .wheelhouse/, to be carried to it (the device tool's `carry: [".wheelhouse"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --dest .wheelhouse --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -r scripts/device-requirements.txt
du -sh .wheelhouse
