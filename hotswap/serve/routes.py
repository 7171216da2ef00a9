"""Open Inference Protocol v2 routes on one APIRouter."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hotswap import __version__
from hotswap.errors import HotswapError, InvalidInput
from hotswap.serve.codec import decode_infer_request, encode_infer_response
from hotswap.serve.repository import ModelRepository

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "parameters"]


def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def _repo(request: Request) -> ModelRepository:
    return request.app.state.repository


def _failure_reason(exc: Exception) -> str:
    return {400: "invalid_input", 503: "queue_full", 504: "timeout"}.get(getattr(exc, "status", 500), "backend_error")


def _timeout_s(parameters: dict) -> float | None:
    """Request `parameters.timeout` is in microseconds, as Triton and tritonclient use it."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"parameters.timeout: expected a positive number of microseconds, got {value!r}")
    return value / 1e6


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v2")
    async def server_metadata() -> Response:
        return json_response({"name": "hotswap", "version": __version__, "extensions": EXTENSIONS})

    @router.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        ok = _repo(request).all_ready() and not request.app.state.shutting_down
        return json_response({"ready": ok}, 200 if ok else 503)

    @router.get("/v2/models/{model}")
    @router.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
        return json_response(_repo(request).ready_runner(model, version).metadata())

    @router.get("/v2/models/{model}/ready")
    @router.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        _repo(request).ready_runner(model, version)
        return json_response({"name": model, "ready": True})

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        model, version = request.path_params["model"], request.path_params.get("version")
        repo = _repo(request)
        runner = repo.ready_runner(model, version)
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        series = runner.series
        try:
            try:
                header_length = int(header) if header is not None else None
            except ValueError:
                raise InvalidInput("header Inference-Header-Content-Length: expected an integer, "
                                   f"got {header!r}") from None
            decoded = decode_infer_request(body, header_length)
            # Re-read after the awaits above: a swap may have replaced the runner meanwhile.
            runner = repo.ready_runner(model, version)
            series = runner.series
            outputs = await runner.infer(decoded.inputs, _timeout_s(decoded.parameters))
            payload, headers = encode_infer_response(model, runner.config.version, decoded.id, outputs, decoded)
        except HotswapError as exc:
            series.failure(_failure_reason(exc))
            raise
        series.success.inc()
        series.request_duration.observe(time.perf_counter() - started)
        return Response(payload, headers=headers)

    # The hot path is a plain Starlette route: FastAPI's dependency solving and parameter
    # validation cost more per request than all of hotswap's own request handling.
    router.add_route("/v2/models/{model}/infer", infer, methods=["POST"])
    router.add_route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"])

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        return json_response(_repo(request).index())

    @router.post("/v2/repository/models/{model}/load")
    async def load(request: Request, model: str) -> Response:
        body = await request.body()
        override = None
        if body.strip():
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"load request body: invalid JSON: {exc}") from None
            config = (payload.get("parameters") or {}).get("config") if isinstance(payload, dict) else None
            if isinstance(config, str):
                try:
                    config = orjson.loads(config)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"parameters.config: expected a JSON object string: {exc}") from None
            override = config
        repo = _repo(request)
        repo.slot(model)
        try:
            await repo.load(model, override)
        except HotswapError as exc:
            if exc.status in (400, 404):
                raise
            return json_response({"error": f"failed to load model '{model}': {exc}"}, 400)
        return json_response({})

    @router.post("/v2/repository/models/{model}/unload")
    async def unload(request: Request, model: str) -> Response:
        await _repo(request).unload(model)
        return json_response({})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
