"""load_config: YAML files, errors that name the file and key path, env overrides."""

from __future__ import annotations

import textwrap

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import load_config, parse_config
from hotswap.errors import ConfigError

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})

MINIMAL = """
models:
  - name: tiny
    source: tiny.onnx
    backends:
      - {name: onnxruntime}
"""


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("HOTSWAP_SERVER") or key.startswith("HOTSWAP_MODELS"):
            monkeypatch.delenv(key)


def write(tmp_path, text: str, name: str = "hotswap.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(path, registry=REGISTRY) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    return str(info.value)


def test_minimal_config_gets_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), REGISTRY)
    assert config.server.host == "127.0.0.1" and config.server.port == 8000
    (model,) = config.models
    assert model.name == "tiny" and model.version == "1" and model.instances == 1
    assert model.backends[0].name == "onnxruntime" and model.backends[0].options == {}
    assert model.batching.max_batch_size == 32 and model.batching.max_queue_size == 1024
    assert model.declared_signature() is None
    assert config.model("tiny") is model and config.model("other") is None


def test_full_config(tmp_path):
    config = load_config(write(tmp_path, """
        server: {host: 0.0.0.0, port: 9000, log_level: debug}
        models:
          - name: tiny
            version: "3"
            source: tiny.pt
            instances: 2
            backends:
              - {name: onnxruntime, providers: [CUDAExecutionProvider, {name: CPUExecutionProvider}]}
              - {name: torch, device: "cuda:0", dtype: float16}
              - {name: torch}
            inputs: [{name: x, datatype: FP32, shape: [-1, 8]}]
            outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
            batching: {max_batch_size: 8, max_queue_delay_ms: 5, max_queue_size: 16, timeout_ms: 250}
    """), REGISTRY)
    assert config.server.port == 9000 and config.server.host == "0.0.0.0"
    model = config.models[0]
    assert [e.label() for e in model.backends] == [
        "onnxruntime[CUDAExecutionProvider,CPUExecutionProvider]", "torch[cuda:0]", "torch"]
    assert model.backends[1].options == {"device": "cuda:0", "dtype": "float16"}
    signature = model.declared_signature()
    assert [s.name for s in signature.inputs] == ["x"] and signature.inputs[0].shape == (-1, 8)
    assert model.batching.timeout_ms == 250 and model.instances == 2


def test_empty_file_is_an_empty_config(tmp_path):
    config = load_config(write(tmp_path, ""), REGISTRY)
    assert config.models == [] and config.server.port == 8000


def test_unknown_key_names_file_and_key_path(tmp_path):
    path = write(tmp_path, MINIMAL + "    bogus: 1\n")
    message = config_error(path)
    assert message.startswith(f"{path}: models.0.bogus: ")
    assert "Extra inputs are not permitted" in message


def test_unknown_top_level_and_server_keys(tmp_path):
    message = config_error(write(tmp_path, "server: {prot: 1}\nmodelz: []\n"))
    assert "server.prot" in message and "modelz" in message
    assert len(message.splitlines()) == 2, "one line per problem"


def test_bad_value_type_names_key(tmp_path):
    path = write(tmp_path, "server: {port: abc}\n")
    message = config_error(path)
    assert message.startswith(f"{path}: server.port: ")
    assert "valid integer" in message and "'abc'" in message


def test_out_of_range_values(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "    instances: 0\n    batching: {max_batch_size: 0}\n"))
    assert "models.0.instances" in message and "models.0.batching.max_batch_size" in message


def test_empty_backends_list(tmp_path):
    path = write(tmp_path, """
        models:
          - {name: tiny, source: tiny.onnx, backends: []}
    """)
    message = config_error(path)
    assert message.startswith(f"{path}: models.0.backends: ")
    assert "at least 1 item" in message


def test_missing_required_keys(tmp_path):
    message = config_error(write(tmp_path, "models:\n  - {name: tiny}\n"))
    assert "models.0.source: Field required" in message
    assert "models.0.backends: Field required" in message


def test_bad_model_name(tmp_path):
    message = config_error(write(tmp_path, MINIMAL.replace("name: tiny", "name: a/b")))
    assert "models.0.name" in message and "'a/b'" in message


def test_duplicate_model_names(tmp_path):
    path = write(tmp_path, MINIMAL + """\
  - name: tiny
    source: other.onnx
    backends: [{name: torch}]
""")
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert "model names must be unique" in message and "repeated: tiny" in message


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "models: [\n  - name: tiny\n")
    message = config_error(path)
    assert message.startswith(f"{path}: invalid YAML")


def test_not_a_mapping(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n")
    message = config_error(path)
    assert message.startswith(f"{path}: expected a mapping") and "got list" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert message.startswith(f"{path}: cannot read config")
    assert "No such file" in message


def test_backend_options_validated_against_the_backend(tmp_path):
    path = write(tmp_path, """
        models:
          - name: tiny
            source: tiny.onnx
            backends:
              - {name: onnxruntime, providerz: [CUDAExecutionProvider]}
    """)
    message = config_error(path)
    assert message.startswith(f"{path}: models.0.backends.0.providerz: ")
    assert "Extra inputs are not permitted" in message
    # Without a registry the chain entry is only checked for a name.
    assert load_config(path).models[0].backends[0].options == {"providerz": ["CUDAExecutionProvider"]}


def test_torch_device_syntax(tmp_path):
    path = write(tmp_path, """
        models:
          - name: tiny
            source: tiny.pt2
            backends:
              - {name: torch, device: cpu}
              - {name: torch, device: "gpu!!"}
    """)
    message = config_error(path)
    assert message.startswith(f"{path}: models.0.backends.1.device: ")
    assert "'gpu!!'" in message
    assert "expected a torch device string like 'cpu', 'cuda:0'" in message


def test_backend_option_value_types(tmp_path):
    path = write(tmp_path, """
        models:
          - name: tiny
            source: tiny.onnx
            backends:
              - {name: onnxruntime, intra_op_threads: -1, graph_optimization_level: max}
              - {name: torch, dtype: int8}
    """)
    message = config_error(path)
    assert "models.0.backends.0.intra_op_threads" in message
    assert "models.0.backends.0.graph_optimization_level" in message
    assert "models.0.backends.1.dtype" in message


def test_problems_in_several_models_are_all_reported(tmp_path):
    path = write(tmp_path, """
        models:
          - {name: a, source: a.onnx, backends: [{name: onnxruntime, bad: 1}]}
          - {name: b, source: b.pt2, backends: [{name: torch}, {name: torch, device: "??"}]}
    """)
    message = config_error(path)
    assert "models.0.backends.0.bad" in message and "models.1.backends.1.device" in message


def test_unknown_backend_is_not_a_config_error(tmp_path):
    config = load_config(write(tmp_path, """
        models:
          - name: tiny
            source: tiny.onnx
            backends:
              - {name: nosuch, whatever: [1, 2]}
              - {name: onnxruntime}
    """), REGISTRY)
    entry = config.models[0].backends[0]
    assert entry.name == "nosuch" and entry.options == {"whatever": [1, 2]}
    assert entry.label() == "nosuch"


def test_env_override_wins_over_file(tmp_path, monkeypatch):
    path = write(tmp_path, "server: {host: 0.0.0.0, port: 8001}\n" + MINIMAL)
    monkeypatch.setenv("HOTSWAP_SERVER__PORT", "9999")
    config = load_config(path, REGISTRY)
    assert config.server.port == 9999
    assert config.server.host == "0.0.0.0", "the rest of the file's server section stays"
    assert config.models[0].name == "tiny"


def test_env_override_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTSWAP_SERVER__PORT", "not-a-port")
    message = config_error(write(tmp_path, MINIMAL))
    assert "server.port" in message


def test_unrelated_hotswap_env_vars_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTSWAP_HOME", str(tmp_path))
    monkeypatch.setenv("HOTSWAP_BACKENDS", "onnxruntime")
    assert load_config(write(tmp_path, MINIMAL), REGISTRY).models[0].name == "tiny"


def test_models_from_env_json(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTSWAP_MODELS", '[{"name": "env", "source": "e.onnx", "backends": [{"name": "torch"}]}]')
    config = load_config(write(tmp_path, MINIMAL), REGISTRY)
    assert [m.name for m in config.models] == ["env"]


def test_inputs_without_outputs(tmp_path):
    path = write(tmp_path, MINIMAL + "    inputs: [{name: x, datatype: FP32, shape: [-1, 8]}]\n")
    message = config_error(path)
    assert message.startswith(f"{path}: models.0: ")
    assert "declare both `inputs` and `outputs`" in message


def test_bad_tensor_spec(tmp_path):
    path = write(tmp_path, MINIMAL + """\
    inputs: [{name: x, datatype: FLOAT, shape: [-1, 8]}]
    outputs: [{name: y, datatype: FP32, shape: [-2]}]
""")
    message = config_error(path)
    assert "models.0.inputs.0.datatype" in message and "expected one of" in message
    assert "models.0.outputs.0.shape" in message


def test_parse_config_names_where(tmp_path):
    with pytest.raises(ConfigError, match=r"^HOTSWAP_MODELS: models.0.backends"):
        parse_config({"models": [{"name": "a", "source": "a", "backends": []}]}, "HOTSWAP_MODELS")
