"""The v2 generate extension over a real uvicorn server, on the tiny random Llama (tests/conftest.py
`tiny_llm`: loads in about a second), so it runs with every `make test` and `make mutate`: each
answer and stream read whole, every refusal with its field, the request metrics, clients that go
away and streams an unload cuts. The OpenAI routes: test_generate_openai.py; the text itself
against transformers on SmolLM2: tests/generate."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from generate_tiny_support import (
    CHAT,
    GEN,
    GENERATION,
    LONG,
    PROMPT,
    SSE,
    counts,
    events,
    failures,
    long_server,
    post,
    start_live,
    whole_text,
)

from tests.conftest import TINY_LLM_VOCAB


@pytest.fixture(scope="module")
def live(server_factory, model_configs, tiny_llm):
    return start_live(server_factory, model_configs, tiny_llm)


def test_v2_generate_answers_the_whole_text(live):
    body = {"text_input": PROMPT, "parameters": {"temperature": 0, "max_tokens": 10, "stream": False,
                                                  "timeout": 5, "ignore_eos": True}, "id": "r-1"}
    answer = post(live, f"/v2/models/{GEN}/generate", body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    data = answer.json()
    assert data == {"id": "r-1", "model_name": GEN, "model_version": "1", "text_output": data["text_output"],
                    "finish_reason": "length"}
    assert len(data["text_output"].split()) == 10 and data["text_output"] == whole_text(live, 10)
    top_level = post(live, f"/v2/models/{GEN}/versions/1/generate",
                     {"text_input": PROMPT, "temperature": 0, "max_tokens": 10, "ignore_eos": True}).json()
    assert top_level == {"model_name": GEN, "model_version": "1", "text_output": data["text_output"],
                         "finish_reason": "length"}
    default = post(live, f"/v2/models/{GEN}/generate", {"text_input": PROMPT, "temperature": 0,
                                                         "ignore_eos": True}).json()
    assert len(default["text_output"].split()) == GENERATION["max_tokens_default"]


def test_v2_generate_stream_sends_each_piece_and_the_finish_last(live):
    response, payloads = events(live, f"/v2/models/{GEN}/versions/1/generate_stream",
                                {"text_input": PROMPT, "parameters": {"temperature": 0, "max_tokens": 8}, "id": "s"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert {k: response.headers[k] for k in SSE} == SSE
    pieces = [json.loads(p) for p in payloads]
    assert len(pieces) >= 2
    assert all(set(p) == {"id", "model_name", "model_version", "text_output", "finish_reason"} for p in pieces)
    assert {(p["id"], p["model_name"], p["model_version"]) for p in pieces} == {("s", GEN, "1")}
    assert [p["finish_reason"] for p in pieces] == [None] * (len(pieces) - 1) + ["length"]
    assert "".join(p["text_output"] for p in pieces) == whole_text(live, 8)


def test_a_stop_string_ends_the_text_before_it(live):
    text = whole_text(live, 12)
    stop = text.split()[4]
    body = {"text_input": PROMPT, "parameters": {"temperature": 0, "max_tokens": 12, "stop": [stop, "nowhere"]}}
    answer = post(live, f"/v2/models/{GEN}/generate", body).json()
    assert (answer["text_output"], answer["finish_reason"]) == (text[:text.index(stop)], "stop")
    _, payloads = events(live, f"/v2/models/{GEN}/generate_stream", body)
    pieces = [json.loads(p) for p in payloads]
    assert "".join(p["text_output"] for p in pieces) == text[:text.index(stop)]
    assert [p["finish_reason"] for p in pieces][-1] == "stop"


def test_a_stop_token_ends_a_stream_with_an_event_of_its_own(live):
    words = whole_text(live, 12).split()
    body = {"text_input": PROMPT, "parameters": {"temperature": 0, "max_tokens": 12,
                                                  "stop_token_ids": [TINY_LLM_VOCAB[words[3]]]}}
    _, payloads = events(live, f"/v2/models/{GEN}/generate_stream", body)
    pieces = [json.loads(p) for p in payloads]
    assert pieces[-1]["text_output"] == "" and pieces[-1]["finish_reason"] == "stop"  # the stop token shows nothing
    assert "".join(p["text_output"] for p in pieces).split() == words[:3]


@pytest.mark.parametrize(("body", "message"), [
    ({"text_input": PROMPT, "max_tokens": 3, "seed": 1, "parameters": {"max_tokens": 4, "seed": 2}},
     "max_tokens, seed: given both at the top level and in parameters"),
    ({"text_input": PROMPT, "frobnicate": 1, "beam": 2}, "unknown field(s) beam, frobnicate; expected text_input, "
     "parameters, id and the sampling fields ignore_eos, max_tokens, seed, stop, stop_token_ids, temperature, "
     "top_k, top_p"),
    ({"text_input": PROMPT, "parameters": {"beam": 2, "alpha": 1}}, "parameters: unknown alpha, beam; expected "
     "ignore_eos, max_tokens, seed, stop, stop_token_ids, temperature, top_k, top_p"),
    ({"text_input": PROMPT, "parameters": [1]}, "parameters: expected a JSON object"),
    ({"text_input": ""}, "text_input: expected a non-empty string"),
    ({"text_input": ["a"]}, "text_input: expected a non-empty string"),
    ({"parameters": {}}, "text_input: expected a non-empty string"),
    ({"text_input": PROMPT, "id": 7}, "id: expected a string"),
    ({"text_input": PROMPT, "parameters": {"max_tokens": 65}}, "max_tokens: expected an integer in [1, 64], got 65"),
    ({"text_input": PROMPT, "top_p": 0}, "top_p: expected a number in (0, 1]"),
    ([1], "request body: expected a JSON object, got list"),
])
def test_a_bad_v2_generate_request_is_a_400_naming_the_field(live, body, message):
    for route in ("generate", "generate_stream"):
        answer = post(live, f"/v2/models/{GEN}/{route}", body)
        assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_v2_generate_on_a_model_that_does_not_generate_or_does_not_exist(live):
    answer = post(live, "/v2/models/tiny/generate", {"text_input": PROMPT})
    assert (answer.status_code, answer.json()) == (400, {"error": "model 'tiny' does not generate text (its config "
                                                         "has no `generation:` section)"})
    assert post(live, "/v2/models/nope/generate_stream", {"text_input": PROMPT}).status_code == 404
    assert post(live, f"/v2/models/{GEN}/versions/2/generate", {"text_input": PROMPT}).status_code == 404
    bad = httpx.post(f"{live.url}/v2/models/{GEN}/generate", content=b"{", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"].startswith("request body: invalid JSON: ")


def test_a_prompt_over_the_limit_is_refused(live):
    body = {"text_input": " ".join(["w1"] * 60)}
    answer = post(live, f"/v2/models/{GEN}/generate", body)
    assert (answer.status_code, answer.json()) == (400, {"error": "the prompt has 60 tokens; this model takes at "
                                                         "most 48 (generation.max_prompt_tokens)"})


def test_a_long_prompt_is_tokenised_off_the_event_loop_all_the_same(live):
    """Over 32,768 characters the tokenizer runs on a worker thread: the ids, and so the refusal, are
    the ones an inline run gives."""
    words = "w1 " * 11_000  # 33,000 characters
    limit = "; this model takes at most 48 (generation.max_prompt_tokens)"
    v2 = post(live, f"/v2/models/{GEN}/generate", {"text_input": words})
    assert (v2.status_code, v2.json()) == (400, {"error": "the prompt has 11000 tokens" + limit})
    chat = post(live, "/v1/chat/completions", {"model": GEN, "messages": [{"role": "user", "content": words}]})
    assert (chat.status_code, chat.json()["error"]["message"]) == (400, "the prompt has 11004 tokens" + limit)


def test_each_request_is_counted_once_by_its_outcome(live):
    before = counts(live)
    post(live, f"/v2/models/{GEN}/generate", {"text_input": PROMPT, "max_tokens": 2})
    events(live, f"/v2/models/{GEN}/generate_stream", {"text_input": PROMPT, "max_tokens": 2})
    post(live, "/v1/completions", {"model": GEN, "prompt": PROMPT, "max_tokens": 2})
    events(live, "/v1/chat/completions", {"model": GEN, "messages": CHAT, "max_tokens": 2, "stream": True})
    post(live, f"/v2/models/{GEN}/generate", {"text_input": PROMPT, "temperature": 9})
    post(live, "/v1/chat/completions", {"model": GEN, "messages": "hi"})
    after = counts(live)
    assert after.get("success", 0) - before.get("success", 0) == 4
    assert after.get("failureinvalid_input", 0) - before.get("failureinvalid_input", 0) == 2


def test_a_client_that_gives_up_on_a_whole_answer_stops_its_generation(tiny_llm, registry, tmp_path_factory):
    requests = {"/v1/chat/completions": {"model": GEN, "messages": CHAT, **LONG},
                f"/v2/models/{GEN}/generate": {"text_input": PROMPT, "parameters": LONG}}
    with long_server(tiny_llm, registry, tmp_path_factory) as server:
        for path, body in requests.items():
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.url}{path}", json=body, timeout=0.5)
        deadline = time.monotonic() + 20
        while failures(server).get("cancelled", 0) < 2:
            assert time.monotonic() < deadline, failures(server)
            time.sleep(0.05)
        running = [v for (name, labels), v in server.metrics().items()
                   if name == "hotswap_generate_running_sequences" and dict(labels).get("model") == GEN]
        assert failures(server) == {"cancelled": 2.0} and running == [0.0]


def test_streams_cut_by_an_unload_end_with_an_error_event_and_count_a_failure(tiny_llm, registry, tmp_path_factory):
    """Past the drain deadline the engine ends what still runs: a stream that had started gets the
    error as its last event (OpenAI's error object on /v1, {"error"} on v2), and no [DONE]."""
    long = LONG
    streams = {"/v1/chat/completions": {"model": GEN, "messages": CHAT, "stream": True, **long},
               f"/v2/models/{GEN}/generate_stream": {"text_input": PROMPT, "parameters": long}}
    started = threading.Barrier(len(streams) + 1, timeout=60)
    seen: dict[str, list[str]] = {}

    def read(server, path: str) -> None:
        with httpx.stream("POST", f"{server.url}{path}", json=streams[path], timeout=60) as response:
            lines = (line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: "))
            seen[path] = [next(lines)]
            started.wait()
            seen[path] += list(lines)

    with long_server(tiny_llm, registry, tmp_path_factory) as server:
        readers = [threading.Thread(target=read, args=(server, path)) for path in streams]
        for reader in readers:
            reader.start()
        started.wait()
        assert httpx.post(f"{server.url}/v2/repository/models/{GEN}/unload", timeout=60).status_code == 200
        for reader in readers:
            reader.join(60)
        failed = failures(server)
    message = "the model was unloaded or the server is shutting down"
    chat = seen["/v1/chat/completions"]
    assert "[DONE]" not in chat and json.loads(chat[-1]) == {"error": {
        "message": message, "type": "server_error", "param": None, "code": "shutting_down"}}
    assert json.loads(seen[f"/v2/models/{GEN}/generate_stream"][-1]) == {"error": message}
    assert failed == {"shutting_down": 2.0}


def test_a_client_gone_mid_stream_is_counted_as_cancelled(live):
    before = counts(live)
    long = {"temperature": 0, "max_tokens": 64, "ignore_eos": True}
    for path, body in (("/v1/chat/completions", {"model": GEN, "messages": CHAT, "stream": True, **long}),
                       (f"/v2/models/{GEN}/generate_stream", {"text_input": PROMPT, "parameters": long})):
        with httpx.stream("POST", f"{live.url}{path}", json=body, timeout=60) as response:
            next(response.iter_lines())  # one event, then the connection closes
    deadline = time.monotonic() + 30
    while counts(live).get("failurecancelled", 0) - before.get("failurecancelled", 0) < 2:
        assert time.monotonic() < deadline, counts(live)
        time.sleep(0.05)
    after = counts(live)
    assert after.get("success", 0) == before.get("success", 0)
    assert after.get("failurecancelled", 0) - before.get("failurecancelled", 0) == 2
