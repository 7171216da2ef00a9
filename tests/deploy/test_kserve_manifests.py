"""deploy/kserve/ against KServe's own CRD schemas (vendored), closed to unknown fields."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hotswap.backends.registry import discover_backends
from hotswap.config import parse_config
from hotswap.serve.guard import check_exposure

from .kube_schema import load, problems, strict

KSERVE = Path(__file__).resolve().parents[2] / "deploy" / "kserve"
MANIFESTS = sorted(KSERVE.glob("*.yaml"))
RUNTIME = load(KSERVE / "cluster-serving-runtime.yaml")[0]
SERVICES = {path.stem.removeprefix("inferenceservice-"): load(path)[0]
            for path in KSERVE.glob("inferenceservice-*.yaml")}


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_every_manifest_is_checked():
    assert {p.name for p in MANIFESTS} == {"cluster-serving-runtime.yaml", "inferenceservice-cpu.yaml",
                                           "inferenceservice-nvidia.yaml", "inferenceservice-ascend.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kserve_schema(path):
    for document in load(path):
        assert problems(document) == []


@pytest.mark.parametrize(("where", "typo"), [
    (("spec", "predictor", "model"), ("storageUri", "storageURI")),
    (("spec", "predictor", "model", "modelFormat"), ("name", "nmae")),
    (("spec", "predictor"), ("model", "models")),
])
def test_a_misspelled_inferenceservice_field_fails(where, typo):
    document = copy.deepcopy(SERVICES["cpu"])
    node = document
    for key in where:
        node = node[key]
    right, wrong = typo
    node[wrong] = node.pop(right)
    found = problems(document)
    assert any(repr(wrong) in p and "not allowed" in p for p in found), found


def test_a_misspelled_runtime_field_fails_only_when_closed():
    document = copy.deepcopy(RUNTIME)
    container = document["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    # KServe's schema as it is lets the typo through: the reason for closing it.
    assert problems(document, closed=False) == []
    found = problems(document)
    assert found == ["spec.containers.0: Additional properties are not allowed ('readinesProbe' was unexpected)"]


def test_a_wrong_type_fails():
    document = copy.deepcopy(RUNTIME)
    document["spec"]["supportedModelFormats"][0]["priority"] = 0  # KServe: minimum 1
    assert any("priority" in p for p in problems(document))


def test_strict_keeps_open_objects_open():
    schema = {"type": "object", "properties": {"a": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                                     "properties": {"b": {"type": "string"}}}}}
    closed = strict(schema)
    assert closed["additionalProperties"] is False and "additionalProperties" not in closed["properties"]["a"]


def test_runtime_speaks_v2_on_8080_with_v2_health_probes():
    spec = RUNTIME["spec"]
    assert spec["protocolVersions"] == ["v2"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] is True and formats["onnx"]["priority"] >= 1
    assert formats["pytorch"]["autoSelect"] is False  # TorchServe's .mar archives are not hotswap's
    container = spec["containers"][0]
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {8080}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/v2/health/live"
    env = env_of(container)
    assert env["HOTSWAP_SERVER__PORT"] == "8080" and "/mnt/models" in json.loads(env["HOTSWAP_SERVER__MODEL_ROOTS"])


@pytest.mark.parametrize("name", ["runtime", "cpu", "nvidia", "ascend"])
def test_env_is_a_valid_hotswap_config(name, monkeypatch):
    """The runtime's environment, with an example's overrides, is a config hotswap accepts (chain
    options included) and that may bind a pod address."""
    env = env_of(RUNTIME["spec"]["containers"][0])
    if name != "runtime":
        model = SERVICES[name]["spec"]["predictor"]["model"]
        assert model["runtime"] == RUNTIME["metadata"]["name"]
        env |= env_of(model)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{{.Name}}", "example"))
    config = parse_config({}, f"{name} env", discover_backends())
    assert [m.name for m in config.models] == ["example"]
    assert config.models[0].source.removeprefix("hf:") == "/mnt/models"
    check_exposure(config.server)


@pytest.mark.parametrize(("name", "resource", "first"), [
    ("cpu", None, "CPUExecutionProvider"), ("nvidia", "nvidia.com/gpu", "CUDAExecutionProvider"),
    ("ascend", "huawei.com/Ascend910", "npu:0"),
])
def test_accelerator_examples_ask_for_their_device(name, resource, first):
    model = SERVICES[name]["spec"]["predictor"]["model"]
    limits = model["resources"]["limits"]
    assert {key for key in limits if "/" in key} == ({resource} if resource else set())
    chain = json.loads((env_of(model) or env_of(RUNTIME["spec"]["containers"][0]))["HOTSWAP_MODELS"])[0]["backends"]
    assert (chain[0].get("device") or chain[0]["providers"][0]) == first
    if resource:  # no CPU entry: a broken accelerator fails the pod rather than serving slowly
        assert all("CPUExecutionProvider" not in json.dumps(e) and e.get("device") != "cpu" for e in chain)
