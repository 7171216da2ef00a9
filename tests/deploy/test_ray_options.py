"""The `ray:` section and the resources a replica asks for (no Ray needed)."""

from __future__ import annotations

import pytest

from hotswap.config import parse_config
from hotswap.deploy.ray import actor_options, deployment_options, device_kind
from hotswap.deploy.ray_config import RayConfig
from hotswap.errors import ConfigError

CPU = {"name": "onnxruntime", "providers": ["CPUExecutionProvider"]}
CUDA = {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]}
CANN = {"name": "onnxruntime", "providers": [{"name": "CANNExecutionProvider", "options": {"device_id": 0}}]}


def config(*chains: list[dict], ray: dict | None = None):
    models = [{"name": f"m{i}", "source": "m.onnx", "backends": chain} for i, chain in enumerate(chains)]
    return parse_config({"models": models, **({"ray": ray} if ray is not None else {})})


@pytest.mark.parametrize(("entry", "kind"), [
    (CPU, "cpu"), (CUDA, "cuda"), (CANN, "npu"), ({"name": "torch", "device": "cuda:1"}, "cuda"),
    ({"name": "torch", "device": "npu:0"}, "npu"), ({"name": "torch", "device": "cpu"}, "cpu"),
    ({"name": "openvino", "device": "GPU"}, "cpu"),
    ({"name": "onnxruntime", "providers": ["TensorrtExecutionProvider"]}, "cuda"),
])
def test_device_kind(entry, kind):
    assert device_kind(config([entry]).models[0].backends[0]) == kind


def test_resources_follow_each_models_first_entry():
    assert actor_options(config([CPU]), RayConfig()) == {"num_cpus": 1.0}
    assert actor_options(config([CUDA, CPU]), RayConfig()) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert actor_options(config([CPU, CUDA]), RayConfig()) == {"num_cpus": 1.0}  # placed for the first entry
    both = actor_options(config([CANN], [CUDA]), RayConfig())
    assert both == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {"NPU": 1.0}}


def test_overrides_replace_derived_fields_only():
    cfg = config([CUDA, CPU], ray={"num_replicas": 3, "max_ongoing_requests": 8,
                                   "ray_actor_options": {"num_gpus": 0, "num_cpus": 0.5}})
    assert deployment_options(cfg) == {"name": "hotswap", "num_replicas": 3, "max_ongoing_requests": 8,
                                       "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0}}


def test_autoscaling_replaces_the_replica_count():
    cfg = config([CPU], ray={"autoscaling_config": {"min_replicas": 0, "max_replicas": 5}})
    options = deployment_options(cfg)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 32}
    assert deployment_options(config([CPU]))["num_replicas"] == 1


@pytest.mark.parametrize(("ray", "message"), [
    ({"num_replicas": 2, "autoscaling_config": {}}, "not both"),
    ({"autoscaling_config": {"min_replicas": 5, "max_replicas": 2}}, "must not exceed"),
    ({"num_replicas": 0}, "ray.num_replicas"),
    ({"ray_actor_options": {"num_cpu": 1}}, "ray.ray_actor_options.num_cpu"),
    ({"start_timeout_s": 0}, "ray.start_timeout_s"),
])
def test_bad_ray_sections_are_config_errors(ray, message):
    with pytest.raises(ConfigError, match=message):
        config([CPU], ray=ray)


def test_serve_tooling_builder_reads_a_config_file(tmp_path):
    from ray.serve import Application

    from hotswap.deploy.ray import app_from_args

    path = tmp_path / "hotswap.yaml"
    path.write_text("models: [{name: m, source: m.onnx, backends: [{name: onnxruntime}]}]\nray: {num_replicas: 2}\n")
    assert isinstance(app_from_args({"config": str(path)}), Application)
    with pytest.raises(ValueError, match="config=<hotswap YAML>"):
        app_from_args({"cfg": str(path)})
    path.write_text("ray: {num_replicas: 0}\n")
    with pytest.raises(ConfigError, match="ray.num_replicas"):
        app_from_args({"config": str(path)})
