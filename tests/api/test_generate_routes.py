"""The generation routes over a real uvicorn server, on the tiny random Llama (tests/conftest.py
`tiny_llm`: loads in about a second), so they run with every `make test` and `make mutate`:
the wire format of each answer and stream, read whole, every refusal with its field, and the
request metrics. tests/generate checks the text itself against transformers on SmolLM2."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from api_support import running_server, server_section

from hotswap.config import parse_config
from hotswap.serve.app import create_app
from tests.conftest import TINY_LLM_WORDS

GEN = "gen"
GENERATION = {"max_sequences": 4, "max_waiting": 4, "max_tokens_default": 12, "max_tokens_limit": 64,
              "max_prompt_tokens": 48, "max_stop": 2}
PROMPT = "w1 w2 w3"
CHAT = [{"role": "user", "content": PROMPT}]
SSE = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@pytest.fixture(scope="module")
def live(server_factory, model_configs, tiny_llm):
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
                                                  "stop_token_ids": [4 + TINY_LLM_WORDS.index(words[3])]}}
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


def test_chat_completion_answers_one_whole_object(live):
    started = int(time.time())
    answer = post(live, "/v1/chat/completions", {"model": GEN, "messages": CHAT, "temperature": 0,
                                                  "max_completion_tokens": 6, "n": 1, "user": "me"})
    assert answer.status_code == 200
    data = answer.json()
    assert data["id"].startswith("chatcmpl-") and len(data["id"]) == len("chatcmpl-") + 32
    assert started <= data["created"] <= time.time()
    assert data == {"id": data["id"], "object": "chat.completion", "created": data["created"], "model": GEN,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": data["choices"][0]["message"]
                                                         ["content"]}, "logprobs": None, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}}
    assert len(data["choices"][0]["message"]["content"].split()) == 6


def test_a_developer_message_is_read_as_a_system_message(live):
    def text(role: str) -> dict:
        body = {"model": GEN, "temperature": 0, "max_tokens": 6, "messages": [{"role": role, "content": "w9"}, *CHAT]}
        return post(live, "/v1/chat/completions", body).json()["choices"][0]["message"]

    assert text("developer") == text("system") != text("user")


def test_chat_stream_opens_with_the_role_and_ends_with_usage_and_done(live):
    body = {"model": GEN, "messages": CHAT, "temperature": 0, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}
    response, payloads = events(live, "/v1/chat/completions", body)
    assert response.status_code == 200 and {k: response.headers[k] for k in SSE} == SSE
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    first, *pieces, usage = chunks
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and {c["model"] for c in chunks} == {GEN}
    assert all(c["usage"] is None for c in [first, *pieces])
    assert [c["choices"][0]["finish_reason"] for c in pieces] == [None] * (len(pieces) - 1) + ["length"]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 6,
                                                         "total_tokens": 13}
    whole = post(live, "/v1/chat/completions", {"model": GEN, "messages": CHAT, "temperature": 0, "max_tokens": 6})
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in pieces) == \
        whole.json()["choices"][0]["message"]["content"]


def test_a_stream_without_include_usage_has_no_usage_fields(live):
    _, payloads = events(live, "/v1/completions", {"model": GEN, "prompt": [PROMPT], "max_tokens": 4,
                                                   "temperature": 0, "stream": True})
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)
    assert all(c["id"].startswith("cmpl-") for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason"} for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole_text(live, 4)
    assert {c["choices"][0]["index"] for c in chunks} == {0}


def test_a_stop_token_ends_openai_streams_with_an_empty_piece_and_usage_last(live):
    """The stop token shows no text: its chunk carries the finish alone (chat: an empty delta);
    with include_usage every chunk has `usage: null` and a usage chunk of the same object comes last."""
    words = whole_text(live, 12).split()
    stop_id = 4 + TINY_LLM_WORDS.index(words[3])
    common = {"model": GEN, "temperature": 0, "max_tokens": 12, "stop_token_ids": [stop_id], "stream": True,
              "stream_options": {"include_usage": True}}
    _, text_events = events(live, "/v1/completions", {**common, "prompt": PROMPT})
    *pieces, usage = [json.loads(p) for p in text_events[:-1]]
    assert pieces[-1]["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in pieces)
    assert (usage["object"], usage["choices"], usage["usage"]["completion_tokens"]) == ("text_completion", [], 4)
    assert "".join(c["choices"][0]["text"] for c in pieces).split() == words[:3]
    chat = post(live, "/v1/chat/completions", {"model": GEN, "messages": CHAT, "temperature": 0, "max_tokens": 12})
    chat_words = chat.json()["choices"][0]["message"]["content"].split()
    common["stop_token_ids"] = [4 + TINY_LLM_WORDS.index(chat_words[3])]
    _, chat_events = events(live, "/v1/chat/completions", {**common, "messages": CHAT})
    *_, last, usage = [json.loads(p) for p in chat_events[:-1]]
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert usage["object"] == "chat.completion.chunk" and usage["usage"]["completion_tokens"] == 4


def test_text_completion_answers_one_whole_object(live):
    data = post(live, "/v1/completions", {"model": GEN, "prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                                          "stop_token_ids": [], "ignore_eos": True}).json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion" and data["model"] == GEN
    assert data["choices"] == [{"index": 0, "text": whole_text(live, 5), "logprobs": None, "finish_reason": "length"}]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}  # w1 w2 w3


def test_a_stop_string_ends_a_completion_with_finish_reason_stop(live):
    text = whole_text(live, 12)
    stop = text.split()[3]
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
    whole = client.completions.create(model=GEN, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (text[:text.index(stop)], "stop")
    streamed = list(client.completions.create(model=GEN, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop],
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text[:text.index(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("path", "body", "param", "message"), [
    ("/v1/chat/completions", {"messages": CHAT, "top_k": -1}, "top_k",
     "top_k: expected an integer in [0, 2147483648], got -1"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 65}, "max_completion_tokens",
     "max_completion_tokens: expected an integer in [1, 64], got 65"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages",
     "messages[0]: expected an object with role one of assistant, developer, system, user"),
    ("/v1/chat/completions", {"messages": CHAT, "prompt": "x"}, "prompt", "unrecognized request argument: prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt",
     "prompt: expected a non-empty string (or a list of exactly one)"),
    ("/v1/completions", {"prompt": PROMPT, "echo": True}, "echo", "echo: only False is supported, got True"),
    ("/v1/completions", {"prompt": PROMPT, "stream": "yes"}, "stream", "stream: expected true or false"),
])
def test_a_bad_openai_request_is_a_400_in_openai_s_shape(live, path, body, param, message):
    answer = post(live, path, {"model": GEN, **body})
    assert answer.status_code == 400
    assert answer.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": "invalid_input"}}


def test_openai_routes_on_a_model_that_does_not_generate_or_does_not_exist(live):
    answer = post(live, "/v1/completions", {"model": "tiny", "prompt": PROMPT})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "model 'tiny' does not generate text (its config has no " \
                                                "`generation:` section)"
    missing = post(live, "/v1/chat/completions", {"model": "nope", "messages": CHAT})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert post(live, "/v1/chat/completions", [CHAT]).json()["error"]["message"] == \
        "request body: expected a JSON object, got list"


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
