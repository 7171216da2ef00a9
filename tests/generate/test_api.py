"""Generation over HTTP, against a real uvicorn server: the `openai` client (streamed and not),
raw Server-Sent Events on /v1 and on the Open Inference Protocol generate extension, limits,
stop strings, disconnects and metrics."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.generate.generate_support import MODEL, openai_client

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France? Answer in one word."
TOKENS = 16


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a streamed response, in order."""
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_chat_greedy_equals_transformers_token_for_token(live, reference):
    want = reference.greedy(reference.chat_ids(FRANCE), TOKENS)
    result = openai_client(live).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=TOKENS)
    assert result.choices[0].message.content == reference.text(want) == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == len(want)  # the end-of-turn token counts, as it was generated
    assert result.usage.prompt_tokens == len(reference.chat_ids(FRANCE))


def test_concurrent_streams_interleave_and_each_gets_its_own_text(live, reference):
    questions = [FRANCE, "Name a large animal that lives in the ocean.", "Say hello.", "What is two plus two?"]
    wanted = [reference.text(reference.greedy(reference.chat_ids(q), TOKENS)) for q in questions]
    client = openai_client(live)
    arrivals: dict[int, list[float]] = {}
    texts: dict[int, str] = {}

    def stream(i: int) -> None:
        pieces, times = [], []
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": questions[i]}],
                                                    temperature=0, max_tokens=TOKENS, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                times.append(time.perf_counter())
        texts[i], arrivals[i] = "".join(pieces), times

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [texts[i] for i in range(len(questions))] == wanted  # batched with the others: still `generate`'s
    # Interleaved: some stream's chunks arrive while another stream is between its first and last chunk.
    spans = [(min(t), max(t)) for t in arrivals.values() if len(t) > 1]
    assert any(a0 < b0 < a1 for a0, a1 in spans for b0, _ in spans if (a0, a1) != (b0, _))


def test_completions_with_and_without_stream(live, reference):
    prompt = "The three primary colours are"
    ids = reference.tokenizer(prompt)["input_ids"]
    want = reference.text(reference.greedy(ids, 8))
    client = openai_client(live)
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert whole.choices[0].text == want and whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 8)
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want


def test_raw_sse_chat_ends_with_done_and_reports_usage(live):
    body = {"model": MODEL, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
        "The capital of France is Paris."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_v2_generate_and_generate_stream_agree(live, reference):
    prompt = "Once upon a time"
    want = reference.text(reference.greedy(reference.tokenizer(prompt)["input_ids"], 10))
    body = {"text_input": prompt, "parameters": {"max_tokens": 10, "temperature": 0}}
    whole = httpx.post(f"{live.url}/v2/models/{MODEL}/generate", json=body, timeout=60).json()
    assert whole == {"model_name": MODEL, "model_version": "1", "text_output": want, "finish_reason": "length"}
    with httpx.stream("POST", f"{live.url}/v2/models/{MODEL}/versions/1/generate_stream", json=body,
                      timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e) for e in sse_events(response)]
    assert len(events) > 3 and {e["model_name"] for e in events} == {MODEL}
    assert "".join(e["text_output"] for e in events) == want
    assert [e["finish_reason"] for e in events][-1] == "length"


def test_stop_string_and_max_tokens(live):
    client = openai_client(live)
    messages = [{"role": "user", "content": FRANCE}]
    stopped = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=[" Paris", "xyz"])
    assert stopped.choices[0].message.content == "The capital of France is"
    assert stopped.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.choices[0].message.content == "The capital of"
    body = {"text_input": "Once upon a time", "parameters": {"temperature": 0, "stop": ","}, "max_tokens": 30}
    v2 = httpx.post(f"{live.url}/v2/models/{MODEL}/generate", json=body, timeout=60).json()
    assert v2["finish_reason"] == "stop" and "," not in v2["text_output"]


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"max_tokens": 513}, "max_tokens", 400),
    ({"temperature": 3}, "temperature", 400),
    ({"n": 2}, "n", 400),
    ({"stop": ["a"] * 9}, "stop", 400),
    ({"frobnicate": 1}, "frobnicate", 400),
    ({"messages": [{"role": "user", "content": "word " * 300}]}, None, 400),
    ({"model": "nope"}, None, 404),
])
def test_bad_requests_get_openai_errors(live, body, param, status):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **body}
    response = httpx.post(f"{live.url}/v1/chat/completions", json=request, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_openai_client_raises_its_own_errors(live):
    with pytest.raises(openai.NotFoundError):
        openai_client(live).chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        openai_client(live).completions.create(model=MODEL, prompt="Hi", max_tokens=100_000)


def test_v2_infer_on_a_generating_model_names_the_right_endpoints(live):
    response = httpx.post(f"{live.url}/v2/models/{MODEL}/infer", json={"inputs": []}, timeout=30)
    assert response.status_code == 400 and "generate" in response.json()["error"]
    metadata = httpx.get(f"{live.url}/v2/models/{MODEL}", timeout=30).json()
    assert metadata["backend"]["device"] == "cpu" and metadata["backend"]["chain_position"] == 1
    assert "cannot generate" in metadata["skipped"][0]["reason"]
    assert httpx.get(f"{live.url}/v2/models/{MODEL}/ready", timeout=30).status_code == 200
