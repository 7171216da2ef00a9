#!/usr/bin/env bash
# On a GPU machine: py-spy samples of one `hotswap serve` process serving MiniLM (torch cuda:0
# float16, batches of 64, 2 ms) under hey posting ~8-token texts from 128 connections: where the
# serving path's time goes when the accelerator is not the limit (bench/gpu_serving.py).
#   PYTHON=python3 scripts/device-profile.sh [OUT_DIR]   (py-spy comes from .wheelhouse)
set -uo pipefail
. "$(dirname "$0")/device-setup.sh" || exit 1
PORT=18123 URL=http://127.0.0.1:18123
cat > /tmp/gpu-profile.yaml <<YAML
server: {host: 127.0.0.1, port: $PORT, log_level: warning}
models:
  - name: minilm
    source: builtin:minilm
    backends: [{name: torch, device: "cuda:0", dtype: float16}]
    batching: {max_batch_size: 64, max_queue_delay_ms: 2, max_queue_size: 4096}
YAML
$PY -m hotswap.cli serve --config /tmp/gpu-profile.yaml > "$OUT/profile-server.log" 2>&1 &
server=$!
$PY -c "import time, urllib.request as u
for _ in range(240):
    try: u.urlopen('$URL/v2/health/ready', timeout=1); break
    except OSError: time.sleep(0.5)" || exit 1
echo '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["How do I reset my password"]}]}' \
  > /tmp/gpu-profile-body.json
hey -z 26s -c 128 -m POST -T application/json -D /tmp/gpu-profile-body.json "$URL/v2/models/minilm/infer" \
  > "$OUT/profile-hey.txt" &
load=$!
sleep 4
py-spy record --pid "$server" --gil --nonblocking -r 200 -d 8 -f raw -o "$OUT/profile-gil.txt" 2>&1 | tail -2
py-spy record --pid "$server" --threads --nonblocking -r 200 -d 8 -f raw -o "$OUT/profile-threads.txt" 2>&1 | tail -2
wait $load
kill -INT $server; wait $server
grep -E "Requests/sec|\[200\]|Average" "$OUT/profile-hey.txt"
