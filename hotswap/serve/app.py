"""The FastAPI app factory. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from hotswap import __version__
from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import HotswapConfig
from hotswap.errors import HotswapError
from hotswap.serve.dataplane import DataPlane
from hotswap.serve.generate_routes import install as install_generate
from hotswap.serve.guard import Guard, check_exposure
from hotswap.serve.infer_endpoint import InferEndpoint
from hotswap.serve.memory import MemoryTrimmer, settle_gc
from hotswap.serve.metrics import Metrics
from hotswap.serve.openai_chat_routes import install as install_openai_chat
from hotswap.serve.openai_routes import install as install_openai
from hotswap.serve.openai_routes import is_openai_path, openai_error_body
from hotswap.serve.repository import ModelRepository
from hotswap.serve.routes import build_router, json_response
from hotswap.serve.schemas import v2_openapi

log = logging.getLogger("hotswap.app")


def error_response(request: Request, status: int, message: str, exc: Exception,
                   headers: dict | None = None) -> Response:
    """v2's {"error": "..."}, or OpenAI's error object under /v1/, whose clients parse that shape."""
    if is_openai_path(request.url.path):
        return json_response(openai_error_body(status, message, exc), status, headers)
    return json_response({"error": message}, status, headers)


# Not mutated: mutmut's trampoline takes any arguments, and uvicorn calls an app once with none to
# detect factories, so a trampolined __call__ would be taken for a factory and every server fail.
class HotswapAPI(FastAPI):  # pragma: no mutate block
    """FastAPI behind hotswap's own ASGI front: the guard (host, tokens, body bounds) sees every
    request first, then the infer route is answered as plain ASGI and only the other routes pass
    through FastAPI's middleware, telemetry check and router, which cost more per request than
    hotswap's whole handling of a small inference."""

    front: Callable[[Scope, Receive, Send], Awaitable[None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)


def create_app(config: HotswapConfig, registry: BackendRegistry | None = None,
               config_dir: Path | None = None, progress: bool = False) -> FastAPI:
    """Build the server for `config`. Models load in the lifespan; a model that cannot
    load stops start-up with every chain entry's reason."""
    check_exposure(config.server)
    registry = registry if registry is not None else discover_backends()
    for name, error in registry.failed.items():
        log.error("backend plugin '%s' failed to import: %s", name, error)
    metrics = Metrics()
    plane = DataPlane(ModelRepository(config, registry, metrics, config_dir, progress), metrics,
                      config.server.model_control, config.server.limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plane.repository.load_all()
        restore_gc = settle_gc(config.server.gc)
        trimmer = asyncio.create_task(MemoryTrimmer(config.server.memory_trim, on_trim=metrics.trimmed).run())
        try:
            yield
        finally:
            trimmer.cancel()
            await plane.close()
            restore_gc()

    app = HotswapAPI(title="hotswap", version=__version__, lifespan=lifespan, redoc_url=None)
    app.openapi = lambda: v2_openapi(app)  # type: ignore[method-assign]
    app.state.dataplane = plane
    app.include_router(build_router())
    install_openai(app)
    install_generate(app)
    install_openai_chat(app)
    app.front = Guard(InferEndpoint(partial(FastAPI.__call__, app), plane), config.server)

    @app.exception_handler(HotswapError)
    async def hotswap_error(request: Request, exc: HotswapError) -> Response:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return error_response(request, exc.status, str(exc), exc, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request, exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, 400, str(exc), exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The text may hold paths or internals: it goes to the log, the client gets the type only.
        log.exception("unexpected error on %s", request.url.path)
        message = f"internal error ({type(exc).__name__}); details are in the server log"
        return error_response(request, 500, message, exc)

    return app
