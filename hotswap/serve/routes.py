"""Open Inference Protocol v2 routes: decode the wire format, call the data plane, encode.

Nothing here looks up runners, applies deadlines or counts requests: that is the data
plane's (hotswap.serve.dataplane), so a second protocol reuses it as it is. The infer route
itself is plain ASGI in front of the router (hotswap.serve.infer_endpoint).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hotswap import __version__
from hotswap.errors import Forbidden, HotswapError, InvalidInput, UnsupportedMediaType
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.schemas import (
    ErrorResponse,
    Live,
    LoadRequest,
    ModelMetadata,
    ModelReady,
    Ready,
    RepositoryModel,
    ServerMetadata,
)

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "parameters"]


def json_response(content: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def _plane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def server_metadata() -> Response:
    return json_response({"name": "hotswap", "version": __version__, "extensions": EXTENSIONS})


async def live() -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    ok = _plane(request).ready()
    return json_response({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    return json_response(_plane(request).model_metadata(model, version))


async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    _plane(request).model_ready(model, version)
    return json_response({"name": model, "ready": True})


async def repository_index(request: Request) -> Response:
    return json_response(_plane(request).index())


def json_object(body: bytes, where: str, error: type[InvalidInput] = InvalidInput) -> dict:
    """A request body that must be one JSON object; `error` (a 400) names `where` otherwise."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise error(f"{where}: expected a JSON object, got {type(payload).__name__}")
    return payload


def parse_load_override(body: bytes) -> dict | None:
    """The `parameters.config` of a repository load body (an object or a JSON string), if any."""
    if not body.strip():
        return None
    payload = json_object(body, "load request body")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"parameters: expected a JSON object, got {type(parameters).__name__}")
    config = parameters.get("config")
    if isinstance(config, str):
        try:
            config = orjson.loads(config)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"parameters.config: expected a JSON object string: {exc}") from None
    if config is not None and not isinstance(config, dict):
        raise InvalidInput("parameters.config: expected a JSON object with model config fields, "
                           f"got {type(config).__name__}")
    return config


def _check_control_request(request: Request) -> None:
    """A browser page must not drive the repository API: no cross-site Origin, JSON bodies only."""
    origin = request.headers.get("origin")
    if origin is not None:
        raise Forbidden(f"repository requests from a web page (Origin {origin!r}) are refused")
    content_type = request.headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type: expected application/json, got {content_type!r}")


async def load(request: Request, model: str) -> Response:
    plane = _plane(request)
    _check_control_request(request)
    override = parse_load_override(await request.body())
    try:
        await plane.load(model, override)
    except HotswapError as exc:
        if exc.status in (400, 403, 404):
            raise
        return json_response({"error": f"failed to load model '{model}': {exc}"}, 400)
    return json_response({})


async def unload(request: Request, model: str) -> Response:
    _check_control_request(request)
    await _plane(request).unload(model)
    return json_response({})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_plane(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_router() -> APIRouter:
    """Every v2 route, plus /metrics; the response models feed the OpenAPI description."""
    errors: dict[int | str, dict] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 503)}
    router = APIRouter(responses=errors)
    router.add_api_route("/v2", server_metadata, methods=["GET"], response_model=ServerMetadata)
    router.add_api_route("/v2/health/live", live, methods=["GET"], response_model=Live)
    router.add_api_route("/v2/health/ready", ready, methods=["GET"], response_model=Ready)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"], response_model=ModelMetadata)
        router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], response_model=ModelReady)
    router.add_api_route("/v2/repository/index", repository_index, methods=["POST"],
                         response_model=list[RepositoryModel])
    for action, handler in (("load", load), ("unload", unload)):
        router.add_api_route(f"/v2/repository/models/{{model}}/{action}", handler, methods=["POST"],
                             response_model=dict, openapi_extra=LOAD_BODY if action == "load" else None,
                             responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}})
    router.add_api_route("/metrics", metrics, methods=["GET"], response_class=Response,
                         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    return router


#: The load body is read by hand (JSON only, bounded); this documents it.
LOAD_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": LoadRequest.model_json_schema()}}}}
