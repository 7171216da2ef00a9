"""HTTP API fixtures: real uvicorn servers on free ports, in background threads.

`server_factory` (module scope) starts a server for any list of model configs and stops
it when the module's tests are done; `server` is one shared default server per module:

    tiny        onnxruntime CPU, tiny.onnx         x FP32[-1,8] -> y FP32[-1,4], z FP32[-1,1]
    tiny_torch  torch cpu, tiny.pt2 (declared y/z)  same signature
    strings     onnxruntime CPU, Identity           text BYTES[-1] -> echo BYTES[-1]
    flaky       torch cpu, TorchScript (scripted)   x FP32[-1,8] -> y FP32[-1,8] (= 2x);
                                                    raises "value too large" when |x| > 1000
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from api_support import TINY_IO, LiveServer, running_server, server_section

from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.serve.app import create_app
from hotswap.testing import TinyModels


@pytest.fixture(scope="session")
def registry() -> BackendRegistry:
    return discover_backends()


@pytest.fixture(scope="session")
def strings_onnx(tmp_path_factory) -> Path:
    """An ONNX model echoing a string tensor: text BYTES[-1] -> Identity -> echo BYTES[-1]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [-1])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("strings") / "strings.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def flaky_torchscript(tmp_path_factory) -> Path:
    """A scripted module that fails at run time for large inputs: a real backend error."""
    import torch

    class Flaky(torch.nn.Module):
        def forward(self, x):
            if bool(x.abs().max() > 1000.0):
                raise RuntimeError("value too large")
            return x * 2.0

    path = tmp_path_factory.mktemp("flaky") / "flaky.pt"
    torch.jit.script(Flaky()).save(str(path))
    return path


@pytest.fixture(scope="session")
def model_configs(tiny: TinyModels, strings_onnx: Path, flaky_torchscript: Path) -> dict[str, dict]:
    """Model config dicts by name, for `server_factory`."""
    return {
        "tiny": {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}]},
        "tiny_torch": {"name": "tiny_torch", "source": str(tiny.exported),
                       "backends": [{"name": "torch", "device": "cpu"}], **TINY_IO},
        "strings": {"name": "strings", "source": str(strings_onnx), "backends": [{"name": "onnxruntime"}]},
        "flaky": {"name": "flaky", "source": str(flaky_torchscript), "backends": [{"name": "torch"}],
                  "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
                  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}]},
    }


@pytest.fixture(scope="module")
def server_factory(registry: BackendRegistry, tmp_path_factory) -> Iterator[Callable[[list[dict]], LiveServer]]:
    """start(models) -> LiveServer; every server started stops when the module is done."""
    with ExitStack() as stack:
        def start(models: list[dict]) -> LiveServer:
            config = parse_config({"server": server_section(tmp_path_factory), "models": models}, "test", registry)
            return stack.enter_context(running_server(create_app(config, registry)))

        yield start


@pytest.fixture(scope="module")
def server(server_factory, model_configs) -> LiveServer:
    """The default server: tiny, tiny_torch, strings and flaky, all loaded."""
    return server_factory([model_configs[name] for name in ("tiny", "tiny_torch", "strings", "flaky")])


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpclient.InferenceServerClient]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def fault_registry(tmp_path_factory) -> BackendRegistry:
    """The built-in backends plus the fault-injecting test plugin (tests/plugins/fault_backend)."""
    from fault_support import fault_registry_for

    return fault_registry_for(tmp_path_factory)
