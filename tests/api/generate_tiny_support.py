"""Helpers of the generation route tests on the tiny random Llama (tests/conftest.py `tiny_llm`),
imported by name as api_support is."""

from __future__ import annotations

import httpx
from api_support import running_server, server_section

from hotswap.config import parse_config
from hotswap.serve.app import create_app

GEN = "gen"
GENERATION = {"max_sequences": 4, "max_waiting": 4, "max_tokens_default": 12, "max_tokens_limit": 64,
              "max_prompt_tokens": 48, "max_stop": 2}
PROMPT = "w1 w2 w3"
CHAT = [{"role": "user", "content": PROMPT}]
SSE = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def start_live(server_factory, model_configs, tiny_llm):
    """`gen` (the tiny Llama, small limits) and `tiny` (a model that does not generate) on one server."""
    return server_factory([{"name": GEN, "source": str(tiny_llm), "generation": GENERATION,
                            "backends": [{"name": "torch", "device": "cpu"}]}, model_configs["tiny"]])


def post(live, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{live.url}{path}", json=body, timeout=60)


def events(live, path: str, body: dict) -> tuple[httpx.Response, list[str]]:
    with httpx.stream("POST", f"{live.url}{path}", json=body, timeout=60) as response:
        payloads = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    return response, payloads


def counts(live) -> dict[str, float]:
    """The generating model's request counters: success, and failure by reason."""
    out: dict[str, float] = {}
    for (name, labels), value in live.metrics().items():
        labels = dict(labels)
        if labels.get("model") == GEN and name in ("hotswap_request_success_total", "hotswap_request_failure_total"):
            out[name.removeprefix("hotswap_request_").removesuffix("_total") + labels.get("reason", "")] = value
    return out


def whole_text(live, max_tokens: int = 12) -> str:
    body = {"text_input": PROMPT, "parameters": {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}}
    return post(live, f"/v2/models/{GEN}/generate", body).json()["text_output"]


LONG = {"temperature": 0, "max_tokens": 3000, "ignore_eos": True}  # seconds of tokens, even for the tiny model


def long_server(tiny_llm, registry, tmp_path_factory):
    """A server whose `gen` may generate LONG, with a 0.2 s drain deadline."""
    model = {"name": GEN, "source": str(tiny_llm), "backends": [{"name": "torch", "device": "cpu"}],
             "generation": {"max_tokens_limit": 3000, "max_kv_tokens": 8192}}
    config = parse_config({"server": {**server_section(tmp_path_factory), "graceful_timeout_s": 0.2},
                           "models": [model]}, "test", registry)
    return running_server(create_app(config, registry))


def failures(server) -> dict[str, float]:
    return {dict(labels).get("reason"): value for (name, labels), value in server.metrics().items()
            if name == "hotswap_request_failure_total" and dict(labels).get("model") == GEN}
