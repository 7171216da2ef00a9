"""`hotswap compare`: one model on every chain entry that loads, parity against the first."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from hotswap.backends.registry import discover_backends
from hotswap.compare import compare_chain
from hotswap.config import parse_config


def test_minilm_on_every_cpu_backend_agrees(minilm_source, monkeypatch):
    monkeypatch.setenv("HOTSWAP_HOME", str(minilm_source.base_dir.parents[1]))
    registry = discover_backends()
    config = parse_config({"models": [{"name": "minilm", "source": "builtin:minilm", "backends": [
        {"name": "onnxruntime"},
        {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]},
        {"name": "torch", "device": "cpu"},
        {"name": "openvino", "device": "CPU", "precision": "f32"},
    ]}]}, "test", registry)
    results = compare_chain(config.models[0], registry, batch=3, runs=2)
    assert [r.position for r in results] == [0, 1, 2, 3]
    assert results[0].max_abs_error == {"embedding": 0.0} and results[0].device == "cpu"
    assert "CUDAExecutionProvider" in results[1].skipped and not results[1].max_abs_error
    for ran in (results[2], results[3]):
        assert ran.device == "cpu" and ran.p50_ms > 0
        assert ran.max_abs_error["embedding"] <= 1e-4, ran


def test_compare_cli_prints_each_entry(tiny, tmp_path):
    config = {"models": [{"name": "tiny", "source": str(tiny.onnx), "backends": [
        {"name": "onnxruntime"}, {"name": "onnxruntime", "graph_optimization_level": "disable"},
        {"name": "not_installed_vendor"}]}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "hotswap.cli", "compare", "--config", str(path), "--runs", "2"],
                            capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "y 0.0e+00, z 0.0e+00" in result.stdout
    assert "'not_installed_vendor' is not installed" in result.stdout
