"""OpenAI's chat and text completions over a real uvicorn server, on the tiny random Llama: the
objects and chunks read whole, streamed and not, usage, stop strings and stop tokens, and every
refusal in OpenAI's error shape with its `param`."""

from __future__ import annotations

import json
import time

import openai
import pytest
from generate_tiny_support import CHAT, GEN, PROMPT, SSE, events, post, start_live, whole_text

from tests.conftest import TINY_LLM_VOCAB


@pytest.fixture(scope="module")
def live(server_factory, model_configs, tiny_llm):
    return start_live(server_factory, model_configs, tiny_llm)


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
    stop_id = TINY_LLM_VOCAB[words[3]]
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
    common["stop_token_ids"] = [TINY_LLM_VOCAB[chat_words[3]]]
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


def test_a_text_completion_stream_has_text_pieces_then_usage_as_text_completion_objects(live):
    body = {"model": GEN, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stop_token_ids": [],
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    response, payloads = events(live, "/v1/completions", body)
    assert response.status_code == 200 and payloads[-1] == "[DONE]"
    *pieces, usage = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in [*pieces, usage]} == {"text_completion"}
    assert all(c["id"].startswith("cmpl-") and c["usage"] is None for c in pieces)
    assert [c["choices"][0]["index"] for c in pieces] == [0] * len(pieces)
    assert "".join(c["choices"][0]["text"] for c in pieces) == whole_text(live, 5)
    assert [c["choices"][0]["finish_reason"] for c in pieces][-1] == "length"
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5,
                                                         "total_tokens": 8}


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
