"""OpenAI-compatible text generation: decode OpenAI's wire format, call the engine, encode.

    POST /v1/chat/completions   {"model", "messages", "max_tokens" | "max_completion_tokens", "temperature",
                                 "top_p", "top_k" (extension), "seed", "stop", "stream", "stream_options"}
    POST /v1/completions        {"model", "prompt", ...the same sampling fields}

`stream: true` answers Server-Sent Events (`chat.completion.chunk` / `text_completion` objects)
ending with `data: [DONE]`; `stream_options.include_usage` adds the usage chunk. `usage` counts
the model's own tokens: the prompt after the chat template, and every token generated (the stop
token included). Errors take OpenAI's shape (app.error_response for /v1 paths); after a stream
started, as an `{"error": {...}}` event, which the `openai` client raises as APIError.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from hotswap.errors import HotswapError
from hotswap.serve.disconnect import CancelOnDisconnect
from hotswap.serve.generate_common import SSE_HEADERS, SSE_MEDIA_TYPE, GenerationCall, prompt_ids, sampling_params, sse
from hotswap.serve.generate_schemas import ChatCompletionRequest, Completion, CompletionRequest, answers, request_body
from hotswap.serve.openai_routes import InvalidRequest, openai_error_body
from hotswap.serve.openai_schemas import OpenAIErrorResponse
from hotswap.serve.routes import json_object, json_response

if TYPE_CHECKING:  # the engine pulls in torch and transformers: imported when a model generates
    from hotswap.generate.sequence import Chunk
    from hotswap.generate.service import Generation


_SAMPLING = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
             "stop_token_ids", "ignore_eos"}
#: Accepted only at their default (what the `openai` client and LangChain may send): anything else is a 400.
_DEFAULTS: dict[str, tuple[Any, ...]] = {"n": (None, 1), "user": (), "frequency_penalty": (None, 0, 0.0),
                                         "presence_penalty": (None, 0, 0.0), "logprobs": (None, False),
                                         "echo": (None, False), "best_of": (None, 1), "suffix": (None,),
                                         "response_format": (None, {"type": "text"})}
_COMMON = {"model", "stream", "stream_options"} | _SAMPLING | set(_DEFAULTS)
_CHAT = _COMMON | {"messages"}
_COMPLETIONS = _COMMON | {"prompt"}
_ROLES = {"system", "user", "assistant", "developer"}


def _check_fields(payload: dict, allowed: set[str]) -> None:
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise InvalidRequest(f"unrecognized request argument: {', '.join(unknown)}", unknown[0])
    for key, defaults in _DEFAULTS.items():
        if key in payload and key != "user" and payload[key] not in defaults:
            raise InvalidRequest(f"{key}: only {defaults[-1]!r} is supported, got {payload[key]!r}", key)
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise InvalidRequest("model: expected the name of a served model", "model")
    if not isinstance(payload.get("stream", False), (bool, type(None))):
        raise InvalidRequest("stream: expected true or false", "stream")
    options = payload.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise InvalidRequest("stream_options: expected {\"include_usage\": true|false}", "stream_options")


def _messages(value: Any) -> list[dict]:
    """Chat messages as the chat template takes them: role and text content."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages: expected a non-empty list of {role, content}", "messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InvalidRequest(f"messages[{i}]: expected an object with role one of {', '.join(sorted(_ROLES))}",
                                 "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise InvalidRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content: expected a string", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    return out


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise InvalidRequest("prompt: expected a non-empty string (or a list of exactly one)", "prompt")
    return value


class _Completion:
    """One /v1 generation request: its kind, ids and the objects it answers with."""

    def __init__(self, chat: bool, model: str, call: GenerationCall, generation: Generation, usage: bool) -> None:
        self.chat, self.model, self.call, self.generation, self.usage = chat, model, call, generation, usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def usage_of(self, chunk: Chunk) -> dict:
        return {"prompt_tokens": chunk.prompt_tokens, "completion_tokens": chunk.completion_tokens,
                "total_tokens": chunk.prompt_tokens + chunk.completion_tokens}

    def whole(self, text: str, last: Chunk) -> dict:
        finish = last.finish if last.finish in ("stop", "length") else "stop"
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            return self._object("chat.completion", [choice], usage=self.usage_of(last))
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self._object("text_completion", [choice], usage=self.usage_of(last))

    def piece(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        extra = {"usage": None} if self.usage else {}
        if self.chat:
            delta = ({"role": "assistant", "content": ""} if role else {"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._object("chat.completion.chunk", [choice], **extra)
        return self._object("text_completion", [{"index": 0, "text": text or "", "logprobs": None,
                                                 "finish_reason": finish}], **extra)

    async def events(self) -> AsyncIterator[bytes]:
        error: BaseException | None = None
        try:
            if self.chat:
                yield sse(self.piece(None, None, role=True))
            async for chunk in self.generation.chunks():
                finish = chunk.finish if chunk.finish in ("stop", "length") else None if not chunk.finish else "stop"
                if chunk.text or finish:
                    yield sse(self.piece(chunk.text, finish))
                if chunk.finish and self.usage:
                    kind = "chat.completion.chunk" if self.chat else "text_completion"
                    yield sse(self._object(kind, [], usage=self.usage_of(chunk)))
            yield sse(b"[DONE]")
        except HotswapError as exc:
            error = exc
            yield sse(openai_error_body(exc.status, str(exc), exc))
        except BaseException as exc:  # the client went away: the response task is cancelled
            error = exc
            raise
        finally:
            self.generation.cancel()
            self.call.record(error)


async def _complete(request: Request, chat: bool) -> Response:
    payload = json_object(await request.body(), "request body", InvalidRequest)
    _check_fields(payload, _CHAT if chat else _COMPLETIONS)
    call = GenerationCall(request.app.state.dataplane, payload["model"])
    try:
        params = sampling_params({k: v for k, v in payload.items() if k in _SAMPLING}, call.service.options,
                                 InvalidRequest, ("max_tokens", "max_completion_tokens"))
        if chat:
            prompt = await prompt_ids(call.service, messages=_messages(payload.get("messages")))
        else:
            prompt = await prompt_ids(call.service, text=_prompt(payload.get("prompt")))
        generation = call.service.submit(prompt, params)
    except BaseException as exc:
        call.record(exc)
        raise
    usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    completion = _Completion(chat, payload["model"], call, generation, usage)
    if payload.get("stream"):
        return StreamingResponse(completion.events(), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
    return await _whole(request, completion)


async def _whole(request: Request, completion: _Completion) -> Response:
    pieces: list[str] = []
    last: Chunk | None = None
    try:
        with CancelOnDisconnect(request.scope, request.receive):
            async for chunk in completion.generation.chunks():
                pieces.append(chunk.text)
                last = chunk
    except BaseException as exc:
        completion.call.record(exc)
        raise
    completion.call.record(None)
    assert last is not None  # chunks() ends only after a chunk with `finish`
    return json_response(completion.whole("".join(pieces), last))


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await _complete(request, chat=True)


async def completions(request: Request) -> Response:
    """POST /v1/completions."""
    return await _complete(request, chat=False)


def install(app: FastAPI) -> None:
    """Add /v1/chat/completions and /v1/completions (infer scope and body limits come from the guard)."""
    router = APIRouter(tags=["OpenAI"])
    documented = answers(Completion, OpenAIErrorResponse, True)
    router.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], responses=documented,
                         openapi_extra=request_body(ChatCompletionRequest))
    router.add_api_route("/v1/completions", completions, methods=["POST"], responses=documented,
                         openapi_extra=request_body(CompletionRequest))
    app.include_router(router)
