"""The MiniLM pipeline every peer server runs: tokenizer -> onnxruntime -> mean pool -> L2 norm.

The same steps and settings as hotswap's text-embedding processor and onnxruntime backend
defaults: tokenizer.json with padding to the batch's longest row and truncation at 256
tokens; a CPU session with graph optimisation "all" and onnxruntime's default threading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class MiniLM:
    def __init__(self, model_dir: str | Path, max_length: int = 256, session_options=None) -> None:
        model_dir = Path(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_padding(direction="right", pad_id=0, pad_type_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(max_length)
        self.tokenizer = tokenizer
        options = session_options
        if options is None:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), 384] float32, unit-norm rows."""
        encodings = self.tokenizer.encode_batch(texts)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        feed = {name: np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64)
                for name in self.input_names}
        tokens = self.session.run(None, feed)[0]
        mask = feed["attention_mask"].astype(np.float32)
        pooled = np.einsum("bsh,bs->bh", tokens, mask, dtype=np.float32)
        pooled /= np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled
