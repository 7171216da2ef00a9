"""OpenAI-compatible embeddings API: decode OpenAI's wire format, call the data plane, encode.

    POST /v1/embeddings       {"model", "input", "encoding_format", "dimensions", "user"}
    GET  /v1/models[/{id}]    every served model /v1 can call: text-embedding and generating ones

Like the v2 routes, nothing here looks up runners, queues, applies limits or counts request
metrics: `DataPlane.call` does, so a text embedded through /v1 is batched with (and
identical to) the same text sent through v2. What this adds: token counts for `usage`
(the model's own tokenizer, see TokenCounter), `dimensions`, base64, and OpenAI's error
shape, plus hotswap_openai_requests_total{model,status}.
"""

from __future__ import annotations

import asyncio
import base64
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import Counter

from hotswap.errors import HotswapError, InvalidInput, ModelNotFound
from hotswap.models.text_embedding import TokenCounter, text_embedding_options
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.openai_schemas import EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList, OpenAIErrorResponse
from hotswap.serve.routes import json_object
from hotswap.serve.runner import ModelRunner

PREFIX = "/v1/"
#: Counting tokens of more characters than this goes to a worker thread, off the event loop.
_INLINE_COUNT_CHARS = 32_768
_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class InvalidRequest(InvalidInput):
    """A 400 that names the OpenAI request field at fault (`param` in the error body)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class EmbeddingQuery:
    """A decoded POST /v1/embeddings body."""

    model: str
    texts: list[str]
    base64: bool
    dimensions: int | None


@dataclass(frozen=True)
class TextModel:
    """What the adapter needs to know of a runner with a text-embedding processor."""

    input_name: str
    output_name: str
    counter: TokenCounter


class OpenAIState:
    """Per-app state: the request counter, the server's start time and a TextModel per runner."""

    def __init__(self, plane: DataPlane) -> None:
        self.created = int(time.time())
        self.requests = Counter("hotswap_openai_requests", "Requests to /v1/embeddings, by model and HTTP status.",
                                ["model", "status"], registry=plane.metrics.registry)
        # Weak keys: a swapped-out runner takes its tokenizer with it.
        self._models: weakref.WeakKeyDictionary[ModelRunner, TextModel | None] = weakref.WeakKeyDictionary()

    async def text_model(self, runner: ModelRunner) -> TextModel | None:
        """The runner's TextModel, or None when its processor is not text-embedding."""
        if runner not in self._models:
            self._models[runner] = await asyncio.to_thread(_text_model, runner)  # reads tokenizer.json
        return self._models[runner]


def _text_model(runner: ModelRunner) -> TextModel | None:
    source = runner.source
    if source is None:
        return None
    # The same config and folder the runner handed to its processors (a model's own wins over the source's).
    options = text_embedding_options(runner.config.processor or source.processor)
    if options is None:
        return None
    return TextModel(options.input_name, options.output_name, TokenCounter(options, source.base_dir))


def decode_embedding_request(body: bytes) -> EmbeddingQuery:
    """The body as an EmbeddingQuery; a 400 naming the field for anything else."""
    payload = json_object(body, "request body", InvalidRequest)
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unrecognized request argument: {', '.join(unknown)}; expected "
                             f"{', '.join(sorted(_FIELDS))}", unknown[0])
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: expected the name of a served model (GET /v1/models)", "model")
    encoding = payload.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest(f"encoding_format: expected 'float' or 'base64', got {encoding!r}", "encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise InvalidRequest(f"dimensions: expected a positive integer, got {dimensions!r}", "dimensions")
    if not isinstance(payload.get("user"), (str, type(None))):
        raise InvalidRequest("user: expected a string", "user")
    return EmbeddingQuery(model, _texts(payload.get("input")), encoding == "base64", dimensions)


def _texts(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise InvalidRequest(f"input: expected a string or a list of strings, got {type(value).__name__}", "input")
    if not texts:
        raise InvalidRequest("input: expected at least one text, got an empty list", "input")
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if not text:
                raise InvalidRequest(f"input[{i}]: empty text; every input must hold at least one character",
                                     "input")
            continue
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            # LangChain's OpenAIEmbeddings sends tiktoken ids unless check_embedding_ctx_length=False.
            raise InvalidRequest("input: token-id arrays are not supported (they would be another tokenizer's "
                                 "ids); send the text itself", "input")
        raise InvalidRequest(f"input[{i}]: expected a string, got {type(text).__name__}", "input")
    return texts


def encode_embeddings(model: str, embeddings: np.ndarray, query: EmbeddingQuery, tokens: int) -> bytes:
    """The response body: float rows (orjson writes numpy natively) or base64 little-endian float32."""
    if query.dimensions is not None:
        embeddings = truncate(embeddings, query.dimensions)
    rows: list[Any]
    if query.base64:
        little = embeddings.astype("<f4", copy=False)
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        rows = list(np.ascontiguousarray(embeddings, dtype=np.float32))
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def truncate(embeddings: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` columns, each row rescaled to unit L2 norm."""
    if dimensions > embeddings.shape[1]:
        raise InvalidRequest(f"dimensions: {dimensions} is more than the model's {embeddings.shape[1]}", "dimensions")
    kept = embeddings[:, :dimensions]
    return kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)


def _state(request: Request) -> tuple[DataPlane, OpenAIState]:
    return request.app.state.dataplane, request.app.state.openai


async def create_embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    plane, state = _state(request)
    label, status = "", 500
    try:
        query = decode_embedding_request(await request.body())
        # Only configured names become label values: clients must not grow the metric's series.
        label = query.model if query.model in plane.repository.slots else ""
        with plane.call(query.model) as call:
            model = await state.text_model(call.runner)
            if model is None:
                raise InvalidRequest(f"model '{query.model}' is not a text-embedding model; /v1/embeddings "
                                     f"serves: {', '.join(await _embedding_models(plane, state)) or 'none'}", "model")
            if sum(map(len, query.texts)) <= _INLINE_COUNT_CHARS:
                tokens = model.counter.count(query.texts)
            else:
                tokens = await asyncio.to_thread(model.counter.count, query.texts)
            outputs = await call.infer({model.input_name: np.array(query.texts, dtype=object)}, None,
                                       request.scope, request.receive)
            body = encode_embeddings(query.model, outputs[model.output_name], query, tokens)
        status = 200
    except HotswapError as exc:
        status = exc.status
        raise
    finally:
        state.requests.labels(label, str(status)).inc()
    return Response(body, media_type="application/json")


async def _embedding_models(plane: DataPlane, state: OpenAIState) -> list[str]:
    return [runner.config.name for runner in plane.repository.runners() if await state.text_model(runner)]


def _card(name: str, state: OpenAIState) -> dict:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "hotswap"}


async def _served_models(plane: DataPlane, state: OpenAIState) -> list[str]:
    """Models /v1 serves, in config order: text-embedding runners, and generating models once loaded
    (/v1/chat/completions, /v1/completions)."""
    embedding = set(await _embedding_models(plane, state))
    return [name for name, slot in plane.repository.slots.items() if name in embedding or slot.generator is not None]


async def list_models(request: Request) -> Response:
    """GET /v1/models."""
    plane, state = _state(request)
    names = await _served_models(plane, state)
    return Response(orjson.dumps({"object": "list", "data": [_card(n, state) for n in names]}),
                    media_type="application/json")


async def retrieve_model(request: Request, model: str) -> Response:
    """GET /v1/models/{model}."""
    plane, state = _state(request)
    names = await _served_models(plane, state)
    if model not in names:
        raise ModelNotFound(f"model '{model}' is not served here through /v1; models: {', '.join(names) or 'none'}")
    return Response(orjson.dumps(_card(model, state)), media_type="application/json")


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def openai_error_body(status: int, message: str, exc: Exception | None = None) -> dict:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = exc.reason if isinstance(exc, HotswapError) else None
    return {"error": {"message": message, "type": kind, "param": getattr(exc, "param", None), "code": code}}


def install(app: FastAPI) -> None:
    """Add the /v1 routes and their state to `app` (after `app.state.dataplane` is set)."""
    app.state.openai = OpenAIState(app.state.dataplane)
    errors: dict[int | str, dict] = {code: {"model": OpenAIErrorResponse} for code in (400, 401, 403, 404, 503)}
    router = APIRouter(responses=errors, tags=["OpenAI"])
    router.add_api_route("/v1/embeddings", create_embeddings, methods=["POST"], response_model=EmbeddingResponse,
                         openapi_extra=_EMBEDDINGS_BODY,
                         responses={413: {"model": OpenAIErrorResponse}, 504: {"model": OpenAIErrorResponse}})
    router.add_api_route("/v1/models", list_models, methods=["GET"], response_model=ModelList)
    router.add_api_route("/v1/models/{model}", retrieve_model, methods=["GET"], response_model=ModelCard)
    app.include_router(router)


#: The body is decoded by hand (decode_embedding_request); this documents it.
_EMBEDDINGS_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": EmbeddingRequest.model_json_schema()}}}}
