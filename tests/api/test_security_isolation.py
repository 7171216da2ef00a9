"""One client's bad input never fails another client's request in the same batch.

The model is a tiny text-embedding pipeline built here (no download): a word-level tokenizer
(`w0`..`w19` -> ids 2..21) in front of an ONNX graph whose token embedding is the token id
itself, with mean pooling and no normalisation, so each text's embedding is the mean of its
word ids: an exact answer per row. The `strings` Identity model has no processor and does not
read its text, so it cannot show this; builtin:minilm could, but costs far more to prepare.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from api_support import LiveServer, server_section
from security_support import metric_sum, serve
from tritonclient.utils import InferenceServerException

WORDS = [f"w{i}" for i in range(20)]
GOOD_THREADS, BAD_THREADS, REQUESTS_EACH = 8, 2, 15


def build_text_model(folder: Path) -> Path:
    """tokenizer.json and mean_id.onnx (input_ids, attention_mask -> token_embeddings [B, S, 1]) in `folder`."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}, "[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    nodes = [helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["ids"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["ids", "axis"], ["token_embeddings"])]
    graph = helper.make_graph(
        nodes, "mean_id",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
         for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", 1])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "mean_id.onnx"))
    return folder / "mean_id.onnx"


@pytest.fixture(scope="module")
def text_server(registry, tmp_path_factory) -> Iterator[LiveServer]:
    source = build_text_model(tmp_path_factory.mktemp("text"))
    model = {"name": "text", "source": str(source), "backends": [{"name": "onnxruntime"}],
             "processor": {"name": "text-embedding", "normalize": False},
             "batching": {"max_batch_size": 64, "max_queue_delay_ms": 20, "adaptive_delay": False}}
    with serve(registry, server_section(tmp_path_factory), [model]) as live:
        yield live


def embed(client: httpclient.InferenceServerClient, texts: list[bytes]) -> np.ndarray:
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=True)
    return client.infer("text", [text]).as_numpy("embedding")


def good_client(live: LiveServer, seed: int, wrong: list[str]) -> None:
    """Send texts of random words; record every answer that is not each row's mean word id."""
    rng, client = np.random.default_rng(seed), live.client()
    for _ in range(REQUESTS_EACH):
        rows = [list(rng.integers(0, len(WORDS), rng.integers(1, 6))) for _ in range(rng.integers(1, 4))]
        texts = [" ".join(WORDS[i] for i in row).encode() for row in rows]
        try:
            got = embed(client, texts)
        except InferenceServerException as exc:
            wrong.append(f"{texts}: {exc.status()} {exc.message()}")
            continue
        expected = np.array([[np.mean(row) + 2] for row in rows], dtype=np.float32)
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-5):
            wrong.append(f"{texts}: got {got.ravel().tolist()}, expected {expected.ravel().tolist()}")


def bad_client(live: LiveServer, wrong: list[str]) -> None:
    """Send a valid text then invalid UTF-8; record every answer that is not a 400 naming element 1."""
    client = live.client()
    for _ in range(REQUESTS_EACH):
        try:
            embed(client, [b"w1 w2", b"\xff\xfe"])
            wrong.append("invalid UTF-8 was accepted")
        except InferenceServerException as exc:
            if exc.status() != "400" or "input 'text': element 1 is not valid UTF-8" not in exc.message():
                wrong.append(f"{exc.status()} {exc.message()}")


def test_invalid_utf8_fails_only_its_own_request(text_server):
    """8 threads of good texts and 2 of invalid UTF-8, batched together: every good one 200 and right,
    every bad one 400 naming the element; the good requests really shared batches."""
    before = text_server.metrics()
    good_wrong: list[str] = []
    bad_wrong: list[str] = []
    threads = [threading.Thread(target=good_client, args=(text_server, seed, good_wrong))
               for seed in range(GOOD_THREADS)]
    threads += [threading.Thread(target=bad_client, args=(text_server, bad_wrong)) for _ in range(BAD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert good_wrong == [] and bad_wrong == []
    after = text_server.metrics()

    def grew(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert grew("hotswap_request_success_total", model="text") == GOOD_THREADS * REQUESTS_EACH
    assert grew("hotswap_request_failure_total", model="text", reason="invalid_input") == BAD_THREADS * REQUESTS_EACH
    assert grew("hotswap_execution_count_total", model="text") < GOOD_THREADS * REQUESTS_EACH  # batched
