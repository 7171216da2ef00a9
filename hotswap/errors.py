"""Errors that cross layer boundaries, each mapped to one HTTP status by the server."""

from __future__ import annotations


class HotswapError(Exception):
    """Base class. `status` is the HTTP status the server answers with."""

    status: int = 500


class InvalidInput(HotswapError):
    """The request (or a tensor in it) does not match what the model serves."""

    status = 400


class ModelNotFound(HotswapError):
    """No model (or version) of that name is configured."""

    status = 404


class ModelNotReady(HotswapError):
    """The model is known but not loaded (loading, unloaded or failed)."""

    status = 503


class QueueFull(HotswapError):
    """The model's request queue is at `max_queue_size`; the client should retry."""

    status = 503


class RequestTimeout(HotswapError):
    """The request's deadline ran out while it waited in the queue."""

    status = 504


class BackendError(HotswapError):
    """The backend failed while running a batch; the message is the backend's."""

    status = 500


class ConfigError(HotswapError):
    """A configuration file or override is invalid; the message names file and key."""

    status = 400


class BackendUnavailable(HotswapError):
    """A backend cannot run here (probe failed) or failed to load the artifact."""

    status = 503
