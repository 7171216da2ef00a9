"""The FastAPI app factory. Nothing is created at import time."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.errors import HotswapError, QueueFull
from hotswap.models.config import HotswapConfig
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository
from hotswap.serve.routes import build_router, json_response

log = logging.getLogger("hotswap.app")


def create_app(config: HotswapConfig, registry: BackendRegistry | None = None,
               config_dir: Path | None = None, progress: bool = False) -> FastAPI:
    """Build the server for `config`. Models load in the lifespan; a model that cannot
    load stops start-up with every chain entry's reason."""
    registry = registry if registry is not None else discover_backends()
    for name, error in registry.failed.items():
        log.error("backend plugin '%s' failed to import: %s", name, error)
    metrics = Metrics()
    repository = ModelRepository(config, registry, metrics, config_dir, progress)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await repository.load_all()
        try:
            yield
        finally:
            app.state.shutting_down = True
            await repository.close()

    app = FastAPI(title="hotswap", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.repository = repository
    app.state.shutting_down = False
    app.include_router(build_router())

    @app.exception_handler(HotswapError)
    async def hotswap_error(request: Request, exc: HotswapError) -> Response:
        headers = {"Retry-After": "1"} if isinstance(exc, QueueFull) else None
        return json_response({"error": str(exc)}, exc.status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return json_response({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": str(exc)}, 400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    return app
