#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU: the CUDA-marked tests and a short CUDA benchmark of
# the default model. Uses the machine's own CUDA build of torch (never the CPU pin), so run
# it with the python that has it:  PYTHON=python3 scripts/device-check.sh [OUT_DIR]
# Needs hotswap's pure-Python dependencies; with no registry there, install them from a
# wheelhouse made here first (scripts/device-wheelhouse.sh) and carried along.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-/tmp/hotswap-device}}
mkdir -p "$OUT"
if [ -d .wheelhouse ]; then
  $PY -m pip install -q --no-index --find-links .wheelhouse -r scripts/device-requirements.txt || exit 1
fi
export PYTHONPATH="$PWD:$PWD/plugins/hotswap-openvino/src${PYTHONPATH:+:$PYTHONPATH}"
export HOTSWAP_HOME="$OUT/home" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  | tee -a "$OUT/gpu.txt"
$PY -m pytest -q -ra -m cuda -p no:cacheprovider tests/unit/test_conformance_builtin.py 2>&1 | tee "$OUT/cuda-tests.txt"
tests=${PIPESTATUS[0]}
timeout 300 $PY bench/device_bench.py --device cuda:0 --out "$OUT/cuda-bench.json" 2>&1 | tee "$OUT/cuda-bench.txt"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
