"""The data plane: what every protocol adapter calls, so none of them re-implements it.

A protocol route (v2 today; OpenAI or gRPC later) only decodes its wire format, calls the
data plane and encodes the answer. The data plane owns the rest of the request path:

    model lookup (404 / 503)  ->  deadline  ->  swap-safe runner  ->  queue + batch
                              ->  request metrics (success, duration, failure by reason)
"""

from __future__ import annotations

import time
from types import TracebackType

from starlette.types import Receive, Scope

from hotswap.config import ModelConfig
from hotswap.errors import Forbidden, ShuttingDown
from hotswap.models.signature import Tensors
from hotswap.serve.disconnect import CancelOnDisconnect
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository
from hotswap.serve.runner import ModelRunner
from hotswap.server_config import LimitsConfig


class InferenceCall:
    """One inference request's passage through the data plane; use it as a context manager.

        with plane.call(model, version) as call:
            inputs = decode(body)                      # a decode error is counted, as invalid_input
            outputs = await call.infer(inputs, timeout_s)
            body = encode(outputs, call.version)

    Leaving the block records success and duration, or the failure's `reason`, on the
    series of the runner that served (or would have served) the request.
    """

    __slots__ = ("_repository", "_name", "_version", "_started", "_limits", "runner")

    # `runner` is the runner that served (or would serve) the request: with failover, the
    # supervisor may move a request to another runner, and its metrics go there.

    def __init__(self, repository: ModelRepository, name: str, version: str | None,
                 limits: LimitsConfig | None) -> None:
        self._repository = repository
        self._limits = limits
        self._name, self._version = name, version
        self._started = time.perf_counter()
        # Looked up before the body is read, so an unknown model costs no upload.
        self.runner: ModelRunner = repository.ready_runner(name, version)

    @property
    def version(self) -> str:
        """The version that answered."""
        return self.runner.config.version

    async def infer(self, inputs: Tensors, timeout_s: float | None = None,
                    scope: Scope | None = None, receive: Receive | None = None) -> Tensors:
        """Queue `inputs` on the model's current runner; `timeout_s` None takes the config default.

        With the connection's ASGI `scope` and `receive`, a client that disconnects while its
        request waits has the request taken out of the queue: it is never computed (ClientClosed).
        """
        # Re-read: a swap may have replaced the model's supervisor while the body was read and decoded.
        supervisor = self._repository.ready_supervisor(self._name, self._version)
        self.runner = supervisor.serving()
        if timeout_s is None:
            timeout_s = default_timeout_s(supervisor.config)
        with CancelOnDisconnect(scope, receive):
            return await supervisor.infer(inputs, timeout_s, self._limits, self._track)

    def _track(self, runner: ModelRunner) -> None:
        self.runner = runner

    def __enter__(self) -> InferenceCall:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.runner.series.outcome(exc, self._started)


def default_timeout_s(config: ModelConfig) -> float | None:
    """The model's default queue deadline (`batching.timeout_ms`), in seconds."""
    timeout_ms = config.batching.timeout_ms
    return None if timeout_ms is None else timeout_ms / 1000


class DataPlane:
    """Model lookup, inference, metadata and repository control for every protocol."""

    def __init__(self, repository: ModelRepository, metrics: Metrics, model_control: str = "none",
                 limits: LimitsConfig | None = None) -> None:
        self.repository = repository
        self.metrics = metrics
        self.model_control = model_control
        self.limits = limits
        self.shutting_down = False

    def call(self, name: str, version: str | None = None) -> InferenceCall:
        """Start one inference request (404 / 503 now if the model cannot serve)."""
        return InferenceCall(self.repository, name, version, self.limits)

    def ready(self) -> bool:
        """Every model is loaded and the server is not draining."""
        return self.repository.all_ready() and not self.shutting_down

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        return self.repository.metadata(name, version)

    def model_ready(self, name: str, version: str | None = None) -> None:
        """Returns if the model serves; raises ModelNotFound / ModelNotReady otherwise."""
        self.repository.check_ready(name, version)

    def index(self) -> list[dict]:
        return self.repository.index()

    def _check_control(self, name: str) -> None:
        if self.model_control != "explicit":
            raise Forbidden("the repository API is switched off (server.model_control: none); set "
                            "server.model_control: explicit to load and unload models at run time")
        self.repository.slot(name)  # 404 before anything is tried

    async def load(self, name: str, override: dict | None = None) -> None:
        """(Re)load a model, optionally with `backends`, `batching` or `instances` replaced."""
        self._check_control(name)
        await self.repository.load(name, override)

    async def unload(self, name: str) -> None:
        self._check_control(name)
        await self.repository.unload(name)

    def abandon_waiting(self) -> None:
        """The drain deadline is near: answer every request still waiting with 503 and Retry-After."""
        error = ShuttingDown("the server is shutting down and could not finish this request in time; retry")
        for runner in self.repository.runners():
            runner.abandon_waiting(error)

    async def close(self) -> None:
        """Refuse readiness, drain every model and free its backends."""
        self.shutting_down = True
        await self.repository.close()
