"""The generation request fields every protocol shares (`sampling_params`) and OpenAI's own
(`_check_fields`, `_messages`, `_prompt`): defaults, both ends of every bound, and each refusal's
exact message and the field it names. Over HTTP: tests/api/test_generate_routes.py."""

from __future__ import annotations

import pytest

from hotswap.errors import InvalidInput
from hotswap.generate.options import GenerationConfig, SamplingParams
from hotswap.serve.generate_common import MAX_STOP_CHARS, invalid_input, sampling_params, sse
from hotswap.serve.openai_chat_routes import _CHAT, _COMPLETIONS, _check_fields, _messages, _prompt
from hotswap.serve.openai_routes import InvalidRequest

OPTIONS = GenerationConfig(max_tokens_default=24, max_tokens_limit=100, max_stop=3)


def params(**fields) -> SamplingParams:
    return sampling_params(fields, OPTIONS, InvalidRequest, ("max_tokens", "max_completion_tokens"))


def refused(message: str, param: str, **fields) -> None:
    with pytest.raises(InvalidRequest) as info:
        params(**fields)
    assert (str(info.value), info.value.param) == (message, param)


def test_defaults_come_from_the_model_s_generation_config():
    assert params() == SamplingParams(max_tokens=24, temperature=1.0, top_p=1.0, top_k=0, seed=None, stop=(),
                                      stop_token_ids=(), ignore_eos=False)
    assert sampling_params({}, GenerationConfig(), invalid_input).max_tokens == 256


def test_every_field_is_read_at_both_ends_of_its_range():
    low = params(max_tokens=1, temperature=0, top_p=1e-9, top_k=0, seed=-(2**63), stop="x", stop_token_ids=[],
                 ignore_eos=False)
    assert low == SamplingParams(max_tokens=1, temperature=0.0, top_p=1e-9, top_k=0, seed=0, stop=("x",),
                                 stop_token_ids=(), ignore_eos=False)
    high = params(max_tokens=100, temperature=2, top_p=1, top_k=2**31, seed=2**64 - 1, stop=["a", "b", "c"],
                  stop_token_ids=list(range(64)), ignore_eos=True)
    assert high == SamplingParams(max_tokens=100, temperature=2.0, top_p=1.0, top_k=2**31, seed=(2**64 - 1) % 2**63,
                                  stop=("a", "b", "c"), stop_token_ids=tuple(range(64)), ignore_eos=True)
    assert isinstance(low.temperature, float) and isinstance(high.top_p, float)
    assert params(seed=7).seed == 7 and params(stop=["y" * MAX_STOP_CHARS]).stop == ("y" * MAX_STOP_CHARS,)
    assert params(top_k=None, ignore_eos=None, stop=None, stop_token_ids=None) == params()


def test_either_max_tokens_key_counts_and_the_later_one_wins():
    assert params(max_completion_tokens=5).max_tokens == 5
    assert params(max_tokens=4, max_completion_tokens=6).max_tokens == 6
    assert params(max_tokens=4, max_completion_tokens=None).max_tokens == 4
    # The v2 generate extension knows max_tokens only.
    assert sampling_params({"max_completion_tokens": 5}, OPTIONS, invalid_input).max_tokens == 24


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_tokens", 0, "max_tokens: expected an integer in [1, 100], got 0"),
    ("max_tokens", 101, "max_tokens: expected an integer in [1, 100], got 101"),
    ("max_tokens", True, "max_tokens: expected an integer in [1, 100], got True"),
    ("max_tokens", 5.0, "max_tokens: expected an integer in [1, 100], got 5.0"),
    ("max_completion_tokens", 101, "max_completion_tokens: expected an integer in [1, 100], got 101"),
    ("temperature", -0.1, "temperature: expected a number in [0, 2], got -0.1"),
    ("temperature", 2.5, "temperature: expected a number in [0, 2], got 2.5"),
    ("temperature", True, "temperature: expected a number in [0, 2], got True"),
    ("temperature", "1", "temperature: expected a number in [0, 2], got '1'"),
    ("top_p", 0, "top_p: expected a number in (0, 1]"),
    ("top_p", 1.5, "top_p: expected a number in [0, 1], got 1.5"),
    ("top_k", -1, "top_k: expected an integer in [0, 2147483648], got -1"),
    ("top_k", 2**31 + 1, "top_k: expected an integer in [0, 2147483648], got 2147483649"),
    ("top_k", True, "top_k: expected an integer in [0, 2147483648], got True"),
    ("seed", 2**64, f"seed: expected an integer in [{-(2**63)}, {2**64 - 1}], got {2**64}"),
    ("seed", -(2**63) - 1, f"seed: expected an integer in [{-(2**63)}, {2**64 - 1}], got {-(2**63) - 1}"),
    ("seed", False, f"seed: expected an integer in [{-(2**63)}, {2**64 - 1}], got False"),
    ("ignore_eos", "yes", "ignore_eos: expected true or false"),
    ("ignore_eos", 1, "ignore_eos: expected true or false"),
    ("stop_token_ids", list(range(65)), "stop_token_ids: expected a list of at most 64 token ids"),
    ("stop_token_ids", [-1], "stop_token_ids: expected a list of at most 64 token ids"),
    ("stop_token_ids", [True], "stop_token_ids: expected a list of at most 64 token ids"),
    ("stop_token_ids", [1.0], "stop_token_ids: expected a list of at most 64 token ids"),
    ("stop_token_ids", 5, "stop_token_ids: expected a list of at most 64 token ids"),
])
def test_a_value_out_of_range_names_its_field_and_the_range(field, value, message):
    refused(message, field, **{field: value})


@pytest.mark.parametrize("value", ["", [""], ["ok", 3], "z" * (MAX_STOP_CHARS + 1), 7, ("a",)])
def test_stop_strings_are_non_empty_bounded_strings(value):
    refused(f"stop: expected a string or a list of non-empty strings of at most {MAX_STOP_CHARS} characters",
            "stop", stop=value)


def test_stop_strings_are_at_most_generation_max_stop():
    refused("stop: at most 3 stop strings (generation.max_stop), got 4", "stop", stop=["a", "b", "c", "d"])
    assert params(stop=[]).stop == ()


def test_the_v2_adapter_gets_plain_invalid_input():
    with pytest.raises(InvalidInput) as info:
        sampling_params({"top_k": -1}, OPTIONS, invalid_input)
    assert type(info.value) is InvalidInput and str(info.value).startswith("top_k: expected an integer")
    assert invalid_input("m", "p").status == 400


def test_sse_frames_one_event():
    assert sse({"a": [1, "é"]}) == b'data: {"a":[1,"\xc3\xa9"]}\n\n'
    assert sse(b"[DONE]") == b"data: [DONE]\n\n"


def openai_refused(message: str, param: str, payload: dict, allowed: set[str] = _CHAT) -> None:
    with pytest.raises(InvalidRequest) as info:
        _check_fields(payload, allowed)
    assert (str(info.value), info.value.param) == (message, param)


def test_openai_fields_outside_the_endpoint_s_set_are_named():
    openai_refused("unrecognized request argument: frobnicate, tools", "frobnicate",
                   {"model": "m", "tools": [], "frobnicate": 1})
    openai_refused("unrecognized request argument: prompt", "prompt", {"model": "m", "prompt": "p"})
    openai_refused("unrecognized request argument: messages", "messages", {"model": "m", "messages": []},
                   _COMPLETIONS)


@pytest.mark.parametrize(("key", "accepted", "refused_value"), [
    ("n", [None, 1], 2), ("frequency_penalty", [None, 0, 0.0], 0.5), ("presence_penalty", [None, 0], -1),
    ("logprobs", [None, False], True), ("echo", [None, False], True), ("best_of", [None, 1], 3),
    ("suffix", [None], "s"), ("response_format", [None, {"type": "text"}], {"type": "json_object"}),
])
def test_openai_fields_hotswap_does_not_implement_are_accepted_only_at_their_default(key, accepted, refused_value):
    for value in accepted:
        _check_fields({"model": "m", key: value}, _CHAT)
    default = {"n": 1, "frequency_penalty": 0.0, "presence_penalty": 0.0, "logprobs": False, "echo": False,
               "best_of": 1, "suffix": None, "response_format": {"type": "text"}}[key]
    openai_refused(f"{key}: only {default!r} is supported, got {refused_value!r}", key,
                   {"model": "m", key: refused_value})


def test_openai_user_model_stream_and_stream_options():
    _check_fields({"model": "m", "user": "anyone", "stream": None, "stream_options": {"include_usage": True}}, _CHAT)
    _check_fields({"model": "m", "stream": True, "stream_options": {}}, _COMPLETIONS)
    for model in (None, "", 3):
        openai_refused("model: expected the name of a served model", "model", {"model": model})
    openai_refused("model: expected the name of a served model", "model", {})
    openai_refused("stream: expected true or false", "stream", {"model": "m", "stream": "yes"})
    for options in ({"include_usage": True, "other": 1}, ["include_usage"], "yes"):
        openai_refused('stream_options: expected {"include_usage": true|false}', "stream_options",
                       {"model": "m", "stream_options": options})


def test_chat_messages_become_role_and_text():
    messages = [{"role": "developer", "content": "be brief"}, {"role": "system", "content": ""},
                {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c", "name": "x"}]
    assert _messages(messages) == [{"role": "system", "content": "be brief"}, {"role": "system", "content": ""},
                                   {"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]


@pytest.mark.parametrize(("value", "message"), [
    ([], "messages: expected a non-empty list of {role, content}"),
    ({"role": "user"}, "messages: expected a non-empty list of {role, content}"),
    (None, "messages: expected a non-empty list of {role, content}"),
    ([{"role": "user", "content": "a"}, "b"],
     "messages[1]: expected an object with role one of assistant, developer, system, user"),
    ([{"role": "tool", "content": "a"}], "messages[0]: expected an object with role one of assistant, developer, "
                                         "system, user"),
    ([{"content": "a"}], "messages[0]: expected an object with role one of assistant, developer, system, user"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content: only text parts are supported"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}],
     "messages[0].content: only text parts are supported"),
    ([{"role": "user", "content": ["a"]}], "messages[0].content: only text parts are supported"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": None}], "messages[1].content: expected a string"),
    ([{"role": "user"}], "messages[0].content: expected a string"),
])
def test_malformed_chat_messages_are_named(value, message):
    with pytest.raises(InvalidRequest) as info:
        _messages(value)
    assert (str(info.value), info.value.param) == (message, "messages")


def test_a_completion_prompt_is_one_non_empty_string():
    assert _prompt("p") == "p" and _prompt(["q"]) == "q"
    for value in ("", [], ["a", "b"], [""], None, 3, [3]):
        with pytest.raises(InvalidRequest) as info:
            _prompt(value)
        assert (str(info.value), info.value.param) == \
            ("prompt: expected a non-empty string (or a list of exactly one)", "prompt")
