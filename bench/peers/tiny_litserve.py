"""The tiny ONNX network on LitServe: POST /predict {"x": [8 floats]} -> {"y": [4 floats], "z": [1 float]}.

    python tiny_litserve.py --model-dir TINY.onnx --port N --max-batch-size 32 --batch-timeout 0.002

(--model-dir names the .onnx file; the flag keeps the command line of litserve_server.py, so
bench/servers.py `litserve(..., script="tiny_litserve.py")` starts either.) Batching is
LitServe's own: up to max_batch_size requests or batch_timeout seconds, one onnxruntime call each.
"""

from __future__ import annotations

import argparse

import litserve as ls
import numpy as np
import onnxruntime as ort


class TinyAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.model_path, sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return request["x"]

    def batch(self, inputs):
        return np.asarray(inputs, dtype=np.float32)

    def predict(self, x):
        rows = np.asarray(x, dtype=np.float32)
        y, z = self.session.run(None, {"x": rows.reshape(-1, 8)})
        pairs = list(zip(y, z))
        return pairs if rows.ndim == 2 else pairs[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        y, z = output
        return {"y": y.tolist(), "z": z.tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True, help="the .onnx file")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.002)
    a = p.parse_args()
    api = TinyAPI(a.model_dir, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
