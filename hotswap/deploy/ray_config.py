"""The `ray:` config section: how `hotswap ray` deploys the config on Ray Serve.

    ray:
      num_replicas: 2                 # or autoscaling_config: {min_replicas: 1, max_replicas: 8}
      max_ongoing_requests: 64
      ray_actor_options: {num_cpus: 0.5}   # merged over what the first chain entries' devices ask for

Only pydantic here: the section validates without Ray installed.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from hotswap.server_config import StrictModel


class RayAutoscaling(StrictModel):
    """Ray Serve autoscaling: replicas follow the requests in flight per replica."""

    min_replicas: int = Field(1, ge=0, le=1024, description="Fewest replicas (0 scales to zero).")
    max_replicas: int = Field(4, ge=1, le=1024, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, le=1024, description="Replicas at deploy time "
                                         "(default: min_replicas).")
    target_ongoing_requests: float = Field(32, gt=0, le=65_536, description="Requests in flight per replica "
                                           "that autoscaling aims for; keep it near a full batch.")

    @model_validator(mode="after")
    def _ordered(self) -> RayAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class RayActorOptions(StrictModel):
    """What one replica asks the Ray scheduler for; each field set here replaces the derived one."""

    num_cpus: float | None = Field(None, ge=0, le=1024, description="CPUs per replica (fractions allowed). "
                                   "A replica asking for more than any node has waits forever, unplaced.")
    num_gpus: float | None = Field(None, ge=0, le=64, description="NVIDIA GPUs per replica (derived: 1 when a "
                                   "model's first chain entry is CUDA).")
    memory: int | None = Field(None, ge=0, le=2**50, description="Bytes of memory reserved per replica.")
    resources: dict[str, float] | None = Field(None, max_length=16, description="Custom resources per replica "
                                               "(derived: {NPU: 1} when a model's first chain entry is Ascend).")


class RayConfig(StrictModel):
    """Ray Serve deployment of the whole config: one deployment, each replica serves every model."""

    app_name: str = Field("hotswap", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Serve application name.")
    num_replicas: int | None = Field(None, ge=1, le=1024, description="Fixed number of replicas (default 1); "
                                     "exclusive with autoscaling_config.")
    autoscaling_config: RayAutoscaling | None = Field(None, description="Autoscale instead of a fixed count.")
    max_ongoing_requests: int = Field(64, ge=1, le=65_536, description="Requests Serve sends one replica at "
                                      "once; above max_batch_size so that hotswap's batcher can fill batches.")
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions,
                                               description="Overrides of the derived per-replica resources.")
    start_timeout_s: float = Field(300, gt=0, le=3600, description="How long a deploy waits for every replica "
                                   "to load its models; unplaceable replicas otherwise wait silently.")

    @model_validator(mode="after")
    def _one_scaling(self) -> RayConfig:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self
