"""The configuration: one YAML file, validated by pydantic, with HOTSWAP_* env overrides.

    server: {host: 127.0.0.1, port: 8000}
    models:
      - name: minilm
        source: builtin:minilm
        backends:                 # ordered; the first that probes and loads wins
          - {name: onnxruntime, providers: [CUDAExecutionProvider]}
          - {name: onnxruntime, providers: [CPUExecutionProvider]}
        batching: {max_batch_size: 32, max_queue_delay_ms: 2, max_queue_size: 1024}

Environment variables override the file: `HOTSWAP_SERVER__PORT=9000`,
`HOTSWAP_MODELS='[...]'` (JSON). Every error names the file, the key path and what was
expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hotswap.deploy.ray_config import RayConfig
from hotswap.errors import ConfigError
from hotswap.generate.options import GenerationConfig, generation_chain_problem
from hotswap.models.signature import Signature, TensorSpec
from hotswap.server_config import ServerConfig, StrictModel

#: `hotswap serve` without --config: the default model, as examples/default.yaml (HOTSWAP_* env still applies).
DEFAULT_CONFIG = {
    "server": {"host": "127.0.0.1", "port": 8000},
    "models": [{"name": "minilm", "source": "builtin:minilm",
                "backends": [{"name": "onnxruntime", "providers": ["CPUExecutionProvider"]}],
                "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2, "max_queue_size": 1024}}],
}


class BatchingConfig(StrictModel):
    """Dynamic batching: requests queue per model and run together on one backend call."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most rows (dim 0) in one backend call; 1 disables "
                                "batching. A single larger request still runs, alone.")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="How long a batch waits to fill after "
                                      "its first request (at most 10 s).")
    adaptive_delay: bool = Field(True, description="Skip the queue delay while waiting has stopped bringing "
                                 "in more requests (low load); false waits the full delay every time, as Triton.")
    wait_after_busy: bool = Field(True, description="A worker that frees up and finds less than a full batch "
                                  "queued still waits up to max_queue_delay_ms (from then, not from the first "
                                  "request's arrival) for more: clients answered by the last batch send their "
                                  "next requests within it, and the next batch is full instead of half. false: "
                                  "the delay counts from the first request's arrival only, as Triton.")
    max_queue_size: int = Field(1024, ge=1, le=65_536, description="Most queued requests; more are answered "
                                "503 with Retry-After.")
    inline_max_us: int = Field(200, ge=0, le=100_000, description="A backend call that recently took under this "
                               "many microseconds runs on the event loop's thread instead of the instance's: the "
                               "thread hop costs more than such a call (only backends that declare inline_safe; "
                               "0: always the instance's thread). A lone such request, when nothing is queued "
                               "and batching would not wait, runs in the request's own task.")
    timeout_ms: float | None = Field(None, gt=0, le=3_600_000, description="Default request deadline while "
                                     "queued, in ms (a request's own `parameters.timeout`, in microseconds as "
                                     "in Triton, overrides it); expired requests get 504.")


class BackendEntry(BaseModel):
    """One entry of a model's backend chain: `name` plus that backend's own options."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="Backend name from the `hotswap.backends` entry points.")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        """Short human name: 'onnxruntime[CUDAExecutionProvider]', 'torch[cuda:0]'."""
        opts = self.options
        detail = opts.get("device") or opts.get("providers")
        if isinstance(detail, list):
            detail = ",".join(p if isinstance(p, str) else str(p.get("name")) for p in detail)
        return f"{self.name}[{detail}]" if detail else self.name


class ProcessorConfig(BaseModel):
    """A model-level pre/post-processing step (`hotswap.processors` entry point) and its options."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Processor name, e.g. text-embedding.")


class FailoverConfig(StrictModel):
    """Runtime failover: move a model to the next chain entry when its backend turns faulty.

    Present = on. A backend is faulty after `after_errors` consecutive failed batches (backend
    errors, not bad input) or after one batch that ran past `batch_timeout_ms`.
    """

    after_errors: int = Field(3, ge=1, le=1000, description="Consecutive failed batches (BackendError) "
                              "that make the serving backend faulty.")
    batch_timeout_ms: float | None = Field(None, gt=0, le=600_000, description="A batch running longer than "
                                           "this marks its backend hung: its requests are retried elsewhere "
                                           "and the hung instance is abandoned. None: no limit.")
    retry: bool = Field(True, description="Retry the requests of a failed batch once on the next backend "
                        "(inference is idempotent), so clients see no error from a failover.")
    standby: bool = Field(False, description="Keep the next chain entry loaded and warm so a switch is "
                          "immediate (costs that backend's memory).")
    retry_primary_after_s: float | None = Field(None, gt=0, le=86_400, description="After this long on a later "
                                                "entry, probe the preferred one in the background (load, "
                                                "warm-up, parity on recent inputs) and move back if it passes.")
    parity_atol: float = Field(1e-3, ge=0, le=1e6, description="Largest absolute difference the probe of the "
                               "preferred entry may show against the serving backend.")
    parity_min_cosine: float = Field(0.999, ge=-1, le=1, description="Smallest per-row cosine similarity the "
                                     "probe may show against the serving backend.")


class ShadowConfig(StrictModel):
    """Shadow parity: re-run a sample of answered batches on a second backend and compare."""

    backend: BackendEntry = Field(description="A chain-entry spec for the shadow, e.g. {name: onnxruntime}.")
    sample: float = Field(0.05, gt=0, le=1, description="Fraction of batches re-run on the shadow.")
    max_queue: int = Field(16, ge=1, le=4096, description="Batches waiting for the shadow; more are dropped "
                           "and counted, never delaying the primary.")
    atol: float = Field(1e-3, ge=0, le=1e6, description="Largest absolute difference that still matches.")
    min_cosine: float = Field(0.999, ge=-1, le=1, description="Smallest per-row cosine similarity that "
                              "still matches.")
    nice: int = Field(19, ge=0, le=19, description="CPU priority (Unix nice) of the shadow's threads: at 19, "
                      "the default, the shadow takes only CPU time the primary leaves idle.")


class ModelConfig(StrictModel):
    """One served model."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Model name in URLs and metric labels.")
    version: str = Field("1", pattern=r"^[A-Za-z0-9_.-]{1,32}$",
                         description="Version reported in metadata and metrics.")
    source: str = Field(max_length=4096, description="Artifact path (.onnx, .pt TorchScript, .pt2 torch.export) "
                        "or a built-in recipe like builtin:minilm.")
    backends: list[BackendEntry] = Field(min_length=1, max_length=16, description="Ordered backend chain.")
    inputs: list[TensorSpec] | None = Field(None, max_length=64, description="Declared inputs (TorchScript).")
    outputs: list[TensorSpec] | None = Field(None, max_length=64, description="Declared outputs (TorchScript).")
    processor: ProcessorConfig | None = Field(None, description="Pre/post-processing around the backend.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    instances: int = Field(1, ge=1, le=16, description="Backend instances, each with its own worker thread.")
    cpu_placement: Literal["auto", "off"] = Field(
        "auto", description="auto: when the model runs on the CPU as one single-threaded instance per core "
        "(instances = cores, one worker process), pin instance i's thread to core i at nice 10, so the event "
        "loop never waits behind compute, and have its processor work on that thread alone (no tokenizer "
        "thread pool taking the other instances' cores); off: leave the threads to the OS.")
    failover: FailoverConfig | None = Field(None, description="Runtime failover along the chain; off when "
                                            "absent.")
    shadow: ShadowConfig | None = Field(None, description="Shadow parity on live batches; off when absent.")
    generation: GenerationConfig | None = Field(None, description="Present: the model generates text "
                                                "(hotswap.generate: continuous batching on the torch backend).")

    @model_validator(mode="after")
    def _both_or_neither(self) -> ModelConfig:
        if (self.inputs is None) != (self.outputs is None):
            raise ValueError("declare both `inputs` and `outputs`, or neither")
        if self.generation is not None:
            problem = generation_chain_problem([b.name for b in self.backends], self.inputs is not None,
                                               self.processor is not None,
                                               self.failover is not None or self.shadow is not None)
            if problem:
                raise ValueError(problem)
        return self

    def declared_signature(self) -> Signature | None:
        if self.inputs is None or self.outputs is None:
            return None
        return Signature(inputs=tuple(self.inputs), outputs=tuple(self.outputs))


class HotswapConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(env_prefix="HOTSWAP_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    ray: RayConfig | None = Field(None, description="Ray Serve deployment (`hotswap ray`); ignored by "
                                "`hotswap serve`.")

    @model_validator(mode="after")
    def _unique_names(self) -> HotswapConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings, file_secret_settings):
        # The file arrives as init kwargs; the environment must override it.
        return env_settings, init_settings

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def format_validation_error(exc: ValidationError, where: str, prefix: tuple = ()) -> str:
    """One line per problem: `where: key.path: message (got value)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)"
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        lines.append(f"{where}: {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def validate_backend_options(config: HotswapConfig, where: str, registry) -> None:
    """Check each chain entry's options against its backend's `Options` (unknown backends are
    left for selection to skip with a reason)."""
    problems = []
    for i, model in enumerate(config.models):
        entries: list[tuple[tuple, BackendEntry]] = [(("models", i, "backends", j), entry)
                                                     for j, entry in enumerate(model.backends)]
        if model.shadow is not None:
            entries.append((("models", i, "shadow", "backend"), model.shadow.backend))
        for prefix, entry in entries:
            backend = registry.get(entry.name)
            if backend is None:
                continue
            try:
                backend.Options.model_validate(entry.options)
            except ValidationError as exc:
                problems.append(format_validation_error(exc, where, prefix))
    if problems:
        raise ConfigError("\n".join(problems))


def parse_config(data: Any, where: str = "<config>", registry=None) -> HotswapConfig:
    """Validate already-parsed config data; errors name `where` and the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with `server` and `models`, got {type(data).__name__}")
    try:
        config = HotswapConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    if registry is not None:
        validate_backend_options(config, where, registry)
    return config


def load_config(path: str | os.PathLike, registry=None) -> HotswapConfig:
    """Read and validate a YAML config file (plus HOTSWAP_* env overrides)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_config(data, str(path), registry)
