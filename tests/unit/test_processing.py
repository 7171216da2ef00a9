"""Processors: discovery through the shared plugin loader, construction bound to a backend
signature, and option checks at config load that name the file and key path."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint

import numpy as np
import pytest

from hotswap.config import ProcessorConfig, parse_config
from hotswap.errors import ConfigError
from hotswap.models.processing import (
    IdentityProcessor,
    ProcessorRegistry,
    discover_processors,
    make_processor,
    validate_processor_options,
)
from hotswap.models.signature import Signature, TensorSpec
from hotswap.models.text_embedding import TextEmbeddingProcessor

MODULES = {
    "echo": "from hotswap.models.processing import IdentityProcessor\n\n\nclass Echo(IdentityProcessor):\n"
            "    name = 'echo'\n",
    "exits": "import sys\n\nsys.exit(3)\n",
}
SIGNATURE = Signature(inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 2)),),
                      outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),))


@pytest.fixture
def plugin_package(tmp_path, monkeypatch) -> str:
    """A package on sys.path with a working processor module and one that exits at import."""
    package = f"hs_processors_{abs(hash(str(tmp_path))) % 10**8}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, text in MODULES.items():
        (root / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_a_processor_is_bound_once_at_construction(tmp_path):
    calls = []

    class Counting(IdentityProcessor):
        name = "counting"

        def bind(self, backend_signature: Signature) -> Signature:
            calls.append(backend_signature)
            return super().bind(backend_signature)

    processor = Counting(Counting.Options(), tmp_path, SIGNATURE)
    assert calls == [SIGNATURE]
    assert processor.signature is SIGNATURE and processor.backend_signature is SIGNATURE
    with pytest.raises(AttributeError):
        processor.signature = SIGNATURE  # read-only: the binding is for the processor's whole life
    inputs = {"x": np.zeros((1, 2), np.float32)}
    assert processor.check(inputs) is inputs  # the default check costs nothing


def _processor_registry(pkg: str) -> ProcessorRegistry:
    return discover_processors(entries=[
        EntryPoint("echo", f"{pkg}.echo:Echo", "hotswap.processors"),
        EntryPoint("exits", f"{pkg}.exits:Echo", "hotswap.processors"),
        EntryPoint("text-embedding", "hotswap.models.text_embedding:TextEmbeddingProcessor", "hotswap.processors"),
    ])


def test_processor_discovery_reports_failures(plugin_package):
    registry = _processor_registry(plugin_package)
    assert set(registry.available) == {"echo", "text-embedding"}
    assert registry.get("text-embedding") is TextEmbeddingProcessor
    assert registry.failed["exits"].startswith("RuntimeError: import called sys.exit(3)")
    assert re.search(r"exits\.py:3\)$", registry.failed["exits"]), registry.failed["exits"]
    assert "text-embedding" in discover_processors().available  # registered in pyproject.toml


def test_make_processor_binds_and_names_the_config_key(plugin_package, tmp_path):
    registry = _processor_registry(plugin_package)
    identity = make_processor(None, tmp_path, SIGNATURE)
    assert isinstance(identity, IdentityProcessor) and identity.signature is SIGNATURE
    echo = make_processor(ProcessorConfig(name="echo"), tmp_path, SIGNATURE, registry=registry)
    assert echo.signature is SIGNATURE and echo.check({"x": 1}) == {"x": 1}
    with pytest.raises(ConfigError, match=r"^models\.m\.processor\.name: unknown processor 'nosuch'; "
                                          r"installed: echo, text-embedding$"):
        make_processor(ProcessorConfig(name="nosuch"), tmp_path, SIGNATURE, "models.m.processor", registry)
    with pytest.raises(ConfigError, match=r"^models\.m\.processor\.name: processor 'exits' failed to import: "
                                          r"RuntimeError: import called sys\.exit\(3\)"):
        make_processor(ProcessorConfig(name="exits"), tmp_path, SIGNATURE, "models.m.processor", registry)
    with pytest.raises(ConfigError, match=r"^models\.m\.processor: pooling: Input should be 'mean', 'cls' or 'last'"):
        make_processor(ProcessorConfig(name="text-embedding", pooling="max"), tmp_path, SIGNATURE,
                       "models.m.processor", registry)


def test_validate_processor_options_at_config_load(plugin_package):
    registry = _processor_registry(plugin_package)
    chain = [{"name": "onnxruntime"}]
    config = parse_config({"models": [
        {"name": "plain", "source": "a.onnx", "backends": chain},
        {"name": "ok", "source": "a.onnx", "backends": chain, "processor": {"name": "text-embedding", "max_length": 8}},
        {"name": "typo", "source": "a.onnx", "backends": chain,
         "processor": {"name": "text-embedding", "colour": "blue", "max_length": 0}},
        {"name": "unknown", "source": "a.onnx", "backends": chain, "processor": {"name": "nosuch"}},
    ]}, "cfg.yaml")
    with pytest.raises(ConfigError) as info:
        validate_processor_options(config, "cfg.yaml", registry)
    assert str(info.value).splitlines() == [
        "cfg.yaml: models.2.processor.max_length: Input should be greater than or equal to 1 (got 0)",
        "cfg.yaml: models.2.processor.colour: Extra inputs are not permitted (got 'blue')",
        "cfg.yaml: models.3.processor.name: unknown processor 'nosuch'; installed: echo, text-embedding",
    ]
    validate_processor_options(parse_config({"models": config.model_dump()["models"][:2]}), "cfg.yaml", registry)
    validate_processor_options(parse_config({}), "cfg.yaml")  # nothing to check, nothing discovered
