"""MiniLM on LitServe: POST /predict {"text": "..."} -> {"embedding": [384 floats]}.

    python litserve_server.py --model-dir DIR --port N --max-batch-size 32 --batch-timeout 0.002

Batching is LitServe's own: up to max_batch_size requests or batch_timeout seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_embed import MiniLM  # noqa: E402


class MiniLMAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device) -> None:
        self.model = MiniLM(self.model_dir)

    def decode_request(self, request):
        return request["text"]

    def predict(self, x):
        texts = x if isinstance(x, list) else [x]
        out = self.model.embed(texts)
        return list(out) if isinstance(x, list) else out[0]

    def encode_response(self, output):
        return {"embedding": output.tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.002)
    a = p.parse_args()
    api = MiniLMAPI(a.model_dir, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
