"""Errors that cross layer boundaries, each with one HTTP status and one metric reason.

The data plane labels `hotswap_request_failure{reason}` with `reason`, so a 503 from a
full queue and a 503 from a model that is not loaded stay apart in the metrics.
"""

from __future__ import annotations

from typing import ClassVar


class HotswapError(Exception):
    """Base class. `status` is the HTTP status the server answers with; `reason` labels metrics."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal_error"


class InvalidInput(HotswapError):
    """The request (or a tensor in it) does not match what the model serves."""

    status = 400
    reason = "invalid_input"


class Unauthorized(HotswapError):
    """No credentials, or credentials the server does not know."""

    status = 401
    reason = "unauthorized"


class Forbidden(HotswapError):
    """The credentials are valid but not for this operation, or the operation is switched off."""

    status = 403
    reason = "forbidden"


class ModelNotFound(HotswapError):
    """No model (or version) of that name is configured."""

    status = 404
    reason = "model_not_found"


class PayloadTooLarge(HotswapError):
    """The request exceeds one of `server.limits`."""

    status = 413
    reason = "too_large"


class UnsupportedMediaType(HotswapError):
    """The request body has a content type the endpoint does not take."""

    status = 415
    reason = "unsupported_media_type"


class ClientClosed(HotswapError):
    """The client went away before its request was computed; nobody reads this answer."""

    status = 499
    reason = "cancelled"


class ModelNotReady(HotswapError):
    """The model is known but not loaded (loading, unloaded or failed)."""

    status = 503
    reason = "model_not_ready"


class ShuttingDown(ModelNotReady):
    """The server's drain deadline passed before this request was answered; retry elsewhere."""

    reason = "shutting_down"


class Rerouted(ModelNotReady):
    """A request left on a runner that was replaced by failover: it goes to the new runner.

    Caught by the supervisor; a 503 with Retry-After if it ever escaped.
    """

    reason = "rerouted"


class QueueFull(HotswapError):
    """The model's request queue is at `max_queue_size`; the client should retry."""

    status = 503
    reason = "queue_full"


class RequestTimeout(HotswapError):
    """The request's deadline ran out while it waited in the queue."""

    status = 504
    reason = "timeout"


class BackendError(HotswapError):
    """The backend failed while running a batch; the message is the backend's."""

    status = 500
    reason = "backend_error"


class ConfigError(HotswapError):
    """A configuration file or override is invalid; the message names file and key."""

    status = 400
    reason = "config_error"


class BackendUnavailable(HotswapError):
    """A backend cannot run here (probe failed) or failed to load the artifact.

    `skipped` holds each chain entry passed over, when the error ends a chain walk.
    """

    status = 503
    reason = "backend_unavailable"

    def __init__(self, message: str, skipped: list | None = None) -> None:
        super().__init__(message)
        self.skipped = skipped or []
