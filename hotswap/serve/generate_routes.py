"""Open Inference Protocol generate extension, as Triton defines it: decode, call the engine, encode.

    POST /v2/models/{m}[/versions/{v}]/generate          one JSON answer
    POST /v2/models/{m}[/versions/{v}]/generate_stream   Server-Sent Events, one per new piece of text

    request:  {"text_input": "...", "parameters": {"max_tokens": 64, "temperature": 0, "stop": [...]}}
              (sampling fields may also sit at the top level, as Triton's TensorRT-LLM examples send them)
    response: {"model_name", "model_version", "text_output", "finish_reason"}  (+ "id" when the request has one)

As Triton does, an error after a stream has started arrives as an event `{"error": "..."}`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from hotswap.errors import HotswapError, InvalidInput
from hotswap.generate.options import SamplingParams
from hotswap.serve.disconnect import CancelOnDisconnect
from hotswap.serve.generate_common import (
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    GenerationCall,
    invalid_input,
    prompt_ids,
    sampling_params,
    sse,
)
from hotswap.serve.generate_schemas import GenerateRequest, GenerateResponse, answers, request_body
from hotswap.serve.routes import json_object, json_response
from hotswap.serve.schemas import ErrorResponse

if TYPE_CHECKING:  # the engine pulls in torch and transformers: imported when a model generates
    from hotswap.generate.service import Generation


_SAMPLING = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
                       "ignore_eos"})
_TOP_LEVEL = frozenset({"id", "text_input", "parameters", "stream"}) | _SAMPLING


def decode_generate_request(body: bytes, call: GenerationCall) -> tuple[str, SamplingParams, str | None]:
    """(prompt text, sampling params, request id); a 400 naming the field for anything else."""
    payload = json_object(body, "request body", InvalidInput)
    unknown = sorted(set(payload) - _TOP_LEVEL)
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(unknown)}; expected text_input, parameters, id "
                           f"and the sampling fields {', '.join(sorted(_SAMPLING))}")
    text = payload.get("text_input")
    if not isinstance(text, str) or not text:
        raise InvalidInput("text_input: expected a non-empty string")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters: expected a JSON object")
    both = sorted(set(parameters) & set(payload) & _SAMPLING)
    if both:
        raise InvalidInput(f"{', '.join(both)}: given both at the top level and in parameters")
    fields = {k: v for k, v in parameters.items() if k not in ("stream", "timeout")}
    unknown = sorted(set(fields) - _SAMPLING)
    if unknown:
        raise InvalidInput(f"parameters: unknown {', '.join(unknown)}; expected {', '.join(sorted(_SAMPLING))}")
    fields |= {k: v for k, v in payload.items() if k in _SAMPLING}
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id: expected a string")
    return text, sampling_params(fields, call.service.options, invalid_input), request_id


def _answer(call: GenerationCall, model: str, text: str, finish: str | None, request_id: str | None) -> dict:
    answer = {"model_name": model, "model_version": call.version, "text_output": text, "finish_reason": finish}
    return answer if request_id is None else {"id": request_id, **answer}


async def _start(request: Request) -> tuple[GenerationCall, Generation, str | None]:
    model = request.path_params["model"]
    call = GenerationCall(request.app.state.dataplane, model, request.path_params.get("version"))
    try:
        text, params, request_id = decode_generate_request(await request.body(), call)
        generation = call.service.submit(await prompt_ids(call.service, text=text), params)
    except BaseException as exc:
        call.record(exc)
        raise
    return call, generation, request_id


async def generate(request: Request) -> Response:
    """POST .../generate: the whole text in one answer."""
    call, generation, request_id = await _start(request)
    pieces, finish = [], None
    try:
        with CancelOnDisconnect(request.scope, request.receive):
            async for chunk in generation.chunks():
                pieces.append(chunk.text)
                finish = chunk.finish
    except BaseException as exc:
        call.record(exc)
        raise
    call.record(None)
    return json_response(_answer(call, request.path_params["model"], "".join(pieces), finish, request_id))


async def generate_stream(request: Request) -> Response:
    """POST .../generate_stream: one event per new piece of text, the last with its finish_reason."""
    call, generation, request_id = await _start(request)
    model = request.path_params["model"]

    async def events() -> AsyncIterator[bytes]:
        error: BaseException | None = None
        try:
            async for chunk in generation.chunks():
                if chunk.text or chunk.finish:
                    yield sse(_answer(call, model, chunk.text, chunk.finish, request_id))
        except HotswapError as exc:
            error = exc
            yield sse({"error": str(exc)})
        except BaseException as exc:  # the client went away (the response task is cancelled)
            error = exc
            raise
        finally:
            generation.cancel()
            call.record(error)

    return StreamingResponse(events(), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)


def install(app: FastAPI) -> None:
    """Add the generate routes (the guard gives them the `infer` scope and the body limits)."""
    router = APIRouter(tags=["Generate"])
    body = request_body(GenerateRequest)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        router.add_api_route(f"{prefix}/generate", generate, methods=["POST"],
                             responses=answers(GenerateResponse, ErrorResponse, False), openapi_extra=body)
        router.add_api_route(f"{prefix}/generate_stream", generate_stream, methods=["POST"],
                             responses=answers(GenerateResponse, ErrorResponse, True), openapi_extra=body)
    app.include_router(router)
