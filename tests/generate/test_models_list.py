"""GET /v1/models lists every model /v1 can call, embedding and generating alike, with the real
`openai` client: a generating model (builtin:smollm2) next to an embedding one (builtin:minilm) and
the tiny ONNX network, which /v1 cannot call and so is not listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.api.api_support import LiveServer, running_server
from tests.generate.generate_support import GENERATION, MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed(folder: Path, home: Path, tiny, minilm_source) -> Iterator[LiveServer]:
    from hotswap.backends.registry import discover_backends
    from hotswap.config import parse_config
    from hotswap.serve.app import create_app

    models = [{"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]},
              {"name": MODEL, "source": "builtin:smollm2", "generation": GENERATION,
               "backends": [{"name": "torch", "device": "cpu"}]},
              {"name": "minilm", "source": "builtin:minilm", "backends": [{"name": "onnxruntime"}]}]
    server = {"model_roots": [str(tiny.onnx.parent), str(home)]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(home))
        registry = discover_backends()
        with running_server(create_app(parse_config({"server": server, "models": models}, "test", registry),
                                       registry)) as live:
            yield live


def test_models_lists_generating_and_embedding_models_in_config_order(mixed):
    client = openai.OpenAI(base_url=f"{mixed.url}/v1", api_key="unused", max_retries=0, timeout=60)
    listed = client.models.list()
    assert [m.id for m in listed] == [MODEL, "minilm"]
    assert all(m.object == "model" and m.owned_by == "hotswap" for m in listed)
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.created == listed.data[0].created
    with pytest.raises(openai.NotFoundError, match="models: smol, minilm"):
        client.models.retrieve("tiny")
    # Every listed model answers on /v1: the list names what the client can call.
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2, temperature=0)
    assert chat.model == MODEL and chat.usage.completion_tokens >= 1
    assert len(client.embeddings.create(model="minilm", input="hello").data[0].embedding) == 384
