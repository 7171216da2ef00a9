"""The `server:` section of the config: bind address, authentication, limits, workers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A config section that refuses unknown keys: a misspelt key is an error naming it, never a
    silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Most server processes `server.workers` allows: each holds a full copy of every model.
MAX_WORKERS = 64

class TokenSource(StrictModel):
    """One bearer token, read from an environment variable or a file (never written in the config)."""

    scope: Literal["infer", "admin"] = Field(description="infer: inference and metadata; admin: also the "
                                             "repository API (load, unload, index).")
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                            description="Environment variable holding the token.")
    file: Path | None = Field(None, description="File whose first line is the token.")

    @model_validator(mode="after")
    def _one_origin(self) -> TokenSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of `env` and `file`")
        return self


class AuthConfig(StrictModel):
    """Bearer-token authentication. Health endpoints are always open."""

    tokens: list[TokenSource] = Field(default_factory=list, max_length=64,
                                      description="Accepted tokens and their scopes; empty: no authentication.")
    metrics: Literal["open", "infer", "admin"] = Field("open", description="Scope /metrics needs (open: none).")
    allow_anonymous: bool = Field(False, description="Allow binding a non-loopback address without tokens.")


class LimitsConfig(StrictModel):
    """Bounds checked before anything is allocated for a request."""

    max_body_bytes: int = Field(64 * 2**20, ge=1024, le=2**31, description="Largest request body; larger "
                                "bodies get 413 from Content-Length before reading, or while streaming.")
    max_rows: int = Field(1024, ge=1, le=2**20, description="Most rows (dim 0) in one inference request.")
    max_bytes_element: int = Field(2**20, ge=1, le=2**31, description="Largest single BYTES element.")
    max_concurrency: int = Field(1024, ge=1, le=65536, description="Most connections and tasks the HTTP server "
                                 "runs at once; more get 503.")
    keep_alive_s: float = Field(5.0, gt=0, le=300, description="Idle keep-alive connections close after this.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="A request body not received within this "
                                  "gets 408: slow or silent clients do not hold the server.")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="A connection whose request headers do not "
                                    "arrive within this (a silent or slowly dripping client) is closed.")


class MemoryTrimConfig(StrictModel):
    """Giving freed heap memory back to the OS (glibc `malloc_trim`) once the server goes idle: after a
    burst of large batches or a swap, the process shrinks back instead of holding its peak."""

    enabled: bool = Field(True, description="Trim when idle (only where the C library has malloc_trim).")
    idle_s: float = Field(1.0, ge=0.05, le=3600, description="How often the process is looked at; it trims "
                          "after an interval in which it used under 10 % of one core.")
    min_growth_mib: int = Field(32, ge=0, le=2**20, description="Trim only when the resident size grew by at "
                                "least this since the last trim.")


class GcConfig(StrictModel):
    """Python's cyclic garbage collector, set for serving once the models have loaded.

    Measured in-process with the tiny model at concurrency 64 (bench/README.md): with CPython's
    defaults, collections of the young generation, triggered every 700 container objects and so
    by the objects of the requests in flight alone, took about 5 µs per request, and the full
    collections about 9 µs more, walking every object of the loaded models each time."""

    freeze_after_load: bool = Field(True, description="After start-up loads the models, move every object "
                                    "alive then into the collector's permanent generation (gc.freeze): full "
                                    "collections no longer walk the models' objects. A model unloaded later "
                                    "is freed by reference counting as usual.")
    young_threshold: int = Field(10_000, ge=100, le=1_000_000, description="Container objects allocated "
                                 "between collections of the young generation (CPython's default: 700).")


class ServerConfig(StrictModel):
    """Where the HTTP server listens, who may call it, and what one request may cost."""

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="uvicorn/hotswap log level.")
    graceful_timeout_s: float = Field(30.0, ge=0, le=3600, description="How long SIGTERM, and a swap, wait for "
                                      "in-flight requests; those still queued then get 503.")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    allowed_hosts: list[str] | None = Field(None, max_length=256, description="Host header values accepted "
                                            "(DNS-rebinding guard); default: loopback names when bound to "
                                            "loopback, any otherwise. '*' accepts any.")
    model_control: Literal["none", "explicit"] = Field("none", description="none: the repository load/unload "
                                                        "API answers 403; explicit: an admin may load, unload and "
                                                        "swap backends at run time.")
    model_roots: list[Path] | None = Field(None, max_length=64, description="Folders model files may come from; "
                                           "default: the config file's folder and the hotswap cache.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    memory_trim: MemoryTrimConfig = Field(default_factory=MemoryTrimConfig)
    gc: GcConfig = Field(default_factory=GcConfig)
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Server processes sharing the port, each with its "
                         "own copy of every model; /metrics adds up all of them. 1: one process, no "
                         "multiprocess metrics. More than 1 refuses model_control: explicit (a load would "
                         "reach one worker only).")

    @model_validator(mode="after")
    def _one_copy_to_swap(self) -> ServerConfig:
        if self.workers > 1 and self.model_control == "explicit":
            raise ValueError(f"model_control: explicit needs workers: 1 (got workers: {self.workers}); a load or "
                             "unload would reach only the worker that answered it, leaving the others on the old "
                             "model; use workers: 1 to swap at run time, or model_control: none")
        return self

    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
