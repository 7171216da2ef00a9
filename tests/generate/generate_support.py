"""Helpers of the generation tests (imported by name, as tests/api imports api_support)."""

from __future__ import annotations

from typing import Any

from tests.api.api_support import LiveServer

MODEL = "smol"
#: Small bounds, so that the limit tests fill them with a few requests.
GENERATION = {"max_sequences": 4, "max_waiting": 2, "max_tokens_default": 24, "max_tokens_limit": 512,
              "max_prompt_tokens": 256, "prefill_chunk_tokens": 64}


def metric(server: LiveServer, name: str) -> float:
    """One generation sample of the `smol` series (0 when absent)."""
    for (sample, labels), value in server.metrics().items():
        if sample == name and dict(labels).get("model") == MODEL:
            return value
    return 0.0


def openai_client(server: LiveServer) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
