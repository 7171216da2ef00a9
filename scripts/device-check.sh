#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU, with that machine's own python3 and CUDA build of torch
# (never the CPU pin): the CUDA-marked tests, the backends' CUDA benchmark, MiniLM served on the
# GPU ÷ the same backend in-process (bench/gpu_serving.py), then the test suite with the GPU
# visible. Every output goes to OUT_DIR.
#   PYTHON=python3 scripts/device-check.sh [OUT_DIR]
# With no registry there, what the image lacks comes from .wheelhouse/ (scripts/device-wheelhouse.sh,
# made here and carried along with hotswap.egg-info, which names the built-in backends' entry points).
set -uo pipefail
. "$(dirname "$0")/device-setup.sh" || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  $PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.is_available(), 'onnxruntime', o.__version__, o.get_available_providers())"; } 2>&1 | tee "$OUT/gpu.txt"
$PY -m pytest -q -ra -m cuda -p no:cacheprovider tests/unit/test_conformance_builtin.py \
  tests/unit/test_minilm_backends.py 2>&1 | tee "$OUT/cuda-tests.txt"
status=${PIPESTATUS[0]}
timeout 150 $PY bench/device_bench.py --device cuda:0 --seconds 2 --out "$OUT/cuda-bench.json" 2>&1 \
  | tee "$OUT/cuda-bench.txt"
status=$(( status || PIPESTATUS[0] ))
(cd bench && timeout 240 $PY gpu_serving.py --device cuda:0 --seconds 3 --warmup 1 --out "$OUT/gpu-serving.json" \
  --logs /tmp/hotswap-logs) 2>&1 | tee "$OUT/gpu-serving.txt"
status=$(( status || PIPESTATUS[0] ))
tail -n 15 /tmp/hotswap-logs/*.log >> "$OUT/gpu-serving.txt" 2>&1
# The whole suite with the GPU visible, but for what needs a package the image lacks (schemathesis, ray,
# the OpenVINO plugin) or a container engine.
[ "${SKIP_SUITE:-0}" = 1 ] || timeout "${SUITE_TIMEOUT:-200}" $PY -m pytest -q -ra -p no:cacheprovider \
  -n "${SUITE_WORKERS:-12}" --timeout 150 tests --ignore tests/api/test_fuzz.py --ignore tests/deploy/test_ray_serve.py --ignore tests/container \
  2>&1 | tee "$OUT/suite.txt"
status=$(( status || PIPESTATUS[0] ))
echo "device-check exit $status"
exit $status
