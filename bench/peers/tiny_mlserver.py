"""The tiny ONNX network (x [n, 8] -> y [n, 4], z [n, 1]) as an MLServer custom runtime.

model-settings.json (written by bench/servers.py `mlserver(..., model="tiny",
implementation="tiny_mlserver.TinyRuntime")`) sets `parameters.uri` to the .onnx file and
max_batch_size / max_batch_time for MLServer's adaptive batching, which concatenates the
requests' `x` along dim 0 and splits `y` and `z` back per request.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TinyRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.settings.parameters.uri, sess_options=options,
                                            providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False).reshape(-1, 8)
        y, z = self.session.run(None, {"x": x})
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("y", y), NumpyCodec.encode_output("z", z)])
