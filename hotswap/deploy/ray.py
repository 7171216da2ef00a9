"""hotswap on Ray Serve: one deployment per config, every replica builds and serves the whole app.

    from hotswap.config import load_config
    from hotswap.deploy import ray as hotswap_ray

    hotswap_ray.start_local_ray()        # before anything else imports Ray; or address="auto"
    url = hotswap_ray.deploy(load_config("examples/default.yaml"), Path("examples"))
    # http://127.0.0.1:8000, Serve's proxy; returns once every replica has loaded its models

`build_application(config)` is the Serve application itself (for `serve.run`); `app_from_args`
builds it for `serve run` and Serve config files. Its ingress is a builder function that Serve
evaluates on each replica: the replica runs `create_app(config)` and Serve runs the app's
lifespan there, so every replica loads the models itself on the device it was placed for, and a
replica is not ready before its models are.
Each response names the replica that answered in the `x-hotswap-replica` header.

The resources each replica asks for come from the first entry of each model's chain (the entry
a replica is meant to run): `num_gpus: 1` for CUDA, `{"NPU": 1}` (the resource Ray registers on
Ascend nodes) for Ascend, CPUs only otherwise; `ray.ray_actor_options` overrides any of it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from hotswap.config import BackendEntry, HotswapConfig, parse_config
from hotswap.deploy.ray_config import RayConfig
from hotswap.errors import HotswapError

#: Response header naming the replica (Serve's replica unique id) that answered.
REPLICA_HEADER = "x-hotswap-replica"
DEPLOYMENT_NAME = "hotswap"

#: Ray's defaults that a local, loopback-only cluster must not have: usage reporting, token
#: auth, and (without the last) the node address rewritten from 127.0.0.1 to a public one.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

_CUDA_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
_NPU_PROVIDERS = {"CANNExecutionProvider"}


class RayDeployError(HotswapError):
    """The Serve application did not become ready (unplaceable replicas, a model that failed)."""


def _ray_modules(local: bool = False) -> tuple[Any, Any]:
    if local:  # Ray reads these when it is imported: set first, so a loopback cluster stays on loopback
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ImportError("hotswap on Ray Serve needs Ray: pip install 'hotswap[ray]'") from exc
    return ray, serve


def device_kind(entry: BackendEntry) -> str:
    """'cuda', 'npu' or 'cpu': the accelerator a chain entry asks for."""
    options = entry.options
    device = str(options.get("device") or "").lower()
    providers = {p if isinstance(p, str) else str(p.get("name")) for p in options.get("providers") or []}
    if device.startswith("cuda") or providers & _CUDA_PROVIDERS:
        return "cuda"
    if device.startswith("npu") or providers & _NPU_PROVIDERS:
        return "npu"
    return "cpu"


def actor_options(config: HotswapConfig, ray_config: RayConfig) -> dict[str, Any]:
    """Per-replica resources: derived from each model's first chain entry, then the overrides."""
    kinds = {device_kind(model.backends[0]) for model in config.models}
    derived: dict[str, Any] = {"num_cpus": 1.0}
    if "cuda" in kinds:
        derived["num_gpus"] = 1.0
    if "npu" in kinds:
        derived["resources"] = {"NPU": 1.0}
    overrides = ray_config.ray_actor_options.model_dump(exclude_none=True)
    return derived | overrides


def deployment_options(config: HotswapConfig) -> dict[str, Any]:
    """Keyword arguments for `serve.deployment` from the `ray:` section."""
    ray_config = config.ray or RayConfig()
    options: dict[str, Any] = {"name": DEPLOYMENT_NAME, "max_ongoing_requests": ray_config.max_ongoing_requests,
                               "ray_actor_options": actor_options(config, ray_config)}
    if ray_config.autoscaling_config is not None:
        options["autoscaling_config"] = ray_config.autoscaling_config.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = ray_config.num_replicas or 1
    return options


class ReplicaHeader:
    """ASGI wrapper adding `x-hotswap-replica` to every response; lifespan and all else pass through."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        await self.app(scope, receive, tagged)


def app_builder(config_data: dict, config_dir: str | None):
    """The function Serve's ingress calls on each replica: the config is re-validated there and
    the app built there (models load in its lifespan, which Serve runs before the replica is ready)."""

    def build_hotswap_app() -> Any:
        from ray import serve

        from hotswap.serve.app import create_app

        config = parse_config(config_data, "<ray replica config>")
        app = create_app(config, config_dir=Path(config_dir) if config_dir else None)
        return ReplicaHeader(app, serve.get_replica_context().replica_id.unique_id)

    return build_hotswap_app


def build_application(config: HotswapConfig, config_dir: Path | None = None) -> Any:
    """The Serve application (`Deployment.bind()`) for `config`."""
    _, serve = _ray_modules()
    data = config.model_dump(mode="json")  # plain data: cloudpickled to every replica, validated there
    ingress = serve.ingress(app_builder(data, str(config_dir) if config_dir else None))
    return serve.deployment(**deployment_options(config))(ingress()).bind()


def app_from_args(args: dict[str, str]) -> Any:
    """Application builder for Serve's own tooling: `serve run hotswap.deploy.ray:app_from_args
    config=path/to/hotswap.yaml`, or `import_path` plus `args: {config: ...}` in a Serve config file."""
    from hotswap.config import load_config

    if set(args) != {"config"}:
        raise ValueError(f"expected exactly one argument, config=<hotswap YAML>; got {sorted(args)}")
    path = Path(args["config"]).resolve()
    return build_application(load_config(path), path.parent)


def start_local_ray(num_cpus: float | None = None, address: str | None = None) -> None:
    """`ray.init` for hotswap: a new local, loopback-only cluster without the dashboard (or
    `address` to join a running one). The LOCAL_RAY_ENV defaults apply unless already set; Ray
    reads them at import, so a process that imported Ray earlier must have had them set then."""
    ray, _ = _ray_modules(local=address is None)
    if ray.is_initialized():
        return
    if address is not None:
        ray.init(address=address, include_dashboard=False)
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    # With auth disabled, a Ray node on a routable address runs anyone's code: refuse it.
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    if addresses != {"127.0.0.1"}:
        ray.shutdown()
        raise RayDeployError(f"the local Ray node took the address {', '.join(sorted(addresses))}, not 127.0.0.1: "
                             "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is first imported")


def deploy(config: HotswapConfig, config_dir: Path | None = None) -> str:
    """Start Serve's proxy on `server.host:server.port`, run the application and wait (at most
    `ray.start_timeout_s`) until every replica has loaded its models. Returns the proxy's URL."""
    ray, serve = _ray_modules()
    if not ray.is_initialized():  # else Serve would start a local Ray on its own, on a routable address
        raise RayDeployError("Ray is not initialised: call start_local_ray() (or ray.init) first")
    ray_config = config.ray or RayConfig()
    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    application = build_application(config, config_dir)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(application, name=ray_config.app_name, route_prefix="/")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failures.append(exc)

    # serve.run waits without a time limit (an unplaceable replica waits forever): wait here instead.
    runner = threading.Thread(target=run, name="hotswap-serve-run", daemon=True)
    runner.start()
    runner.join(ray_config.start_timeout_s)
    if failures:
        raise RayDeployError(f"Ray Serve application '{ray_config.app_name}' failed: {failures[0]}")
    if runner.is_alive():
        wanted = actor_options(config, ray_config)
        have = {k: v for k, v in ray.cluster_resources().items() if "node:" not in k and "memory" not in k}
        raise RayDeployError(f"Ray Serve application '{ray_config.app_name}' not ready after "
                             f"{ray_config.start_timeout_s:.0f}s ({_status_line(serve, ray_config.app_name)}); each "
                             f"replica asks for {wanted} and the cluster has {have}: a replica that no node can "
                             "place waits without an error (`ray status` shows it); see the replica logs otherwise")
    return f"http://{config.server.host}:{config.server.port}"


def _status_line(serve: Any, app_name: str) -> str:
    """What Serve says about the app's deployments (e.g. replicas pending for resources)."""
    try:
        app = serve.status().applications.get(app_name)
    except Exception as exc:  # noqa: BLE001 - only for the error message
        return f"status unavailable ({exc})"
    if app is None:
        return "application not created"
    parts = [f"{name}: {d.status.value} {d.message}".strip() for name, d in app.deployments.items()]
    return "; ".join(parts) or str(app.status)


def serve_until_stopped(app_name: str, poll_s: float = 1.0) -> None:
    """Block until Ctrl-C or SIGTERM, then delete the application and shut Serve down (the CLI)."""
    ray, serve = _ray_modules()

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        serve.delete(app_name)
        serve.shutdown()
        ray.shutdown()
