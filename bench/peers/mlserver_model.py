"""MiniLM as an MLServer custom runtime (v2 protocol; input `text` BYTES with content_type str).

model-settings.json (written by bench/throughput.py) sets max_batch_size / max_batch_time
for MLServer's adaptive batching and `parameters.uri` to the folder holding model.onnx and
tokenizer.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_embed import MiniLM  # noqa: E402


class MiniLMRuntime(MLModel):
    async def load(self) -> bool:
        self.model = MiniLM(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        embeddings = self.model.embed(texts)
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("embedding", embeddings)])
