"""`hotswap compare`: one model on every chain entry that loads, parity against the first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from hotswap.backends.registry import discover_backends
from hotswap.compare import compare_chain, sample_inputs
from hotswap.config import parse_config
from hotswap.testing import TINY_SIGNATURE, build_tiny_models, skip_if_ort_provider

TINY_IO = {"inputs": [s.model_dump() for s in TINY_SIGNATURE.inputs],
           "outputs": [s.model_dump() for s in TINY_SIGNATURE.outputs]}


def test_minilm_on_every_cpu_backend_agrees(minilm_source, monkeypatch):
    """Every CPU entry gives MiniLM's answers within 1e-4 of the first; the CUDA entry is skipped with its reason."""
    skip_if_ort_provider("CUDAExecutionProvider")
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
    """`hotswap compare` prints each entry's per-output error and why an uninstalled backend was skipped."""
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


def test_entries_that_disagree_show_their_error(tmp_path):
    """Parity can fail: a folder whose .onnx and .pt2 come from different weights makes the torch
    entry's error against onnxruntime (the first entry) the true difference of the two networks."""
    a, b = build_tiny_models(tmp_path / "a", seed=0), build_tiny_models(tmp_path / "b", seed=1)
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(a.onnx, folder / "tiny.onnx")
    shutil.copy(b.exported, folder / "tiny.pt2")
    registry = discover_backends()
    config = parse_config({"models": [{"name": "tiny", "source": str(folder), **TINY_IO, "backends": [
        {"name": "onnxruntime"}, {"name": "torch", "device": "cpu"}]}]}, "test", registry)
    results = compare_chain(config.models[0], registry, batch=4, runs=1)
    assert [r.skipped for r in results] == ["", ""]
    assert results[0].max_abs_error == {"y": 0.0, "z": 0.0}
    inputs = sample_inputs(TINY_SIGNATURE, 4)
    want_a, want_b = a.reference(inputs), b.reference(inputs)
    for name in ("y", "z"):
        expected = float(np.abs(want_a[name] - want_b[name]).max())
        assert expected > 1e-3, "the two weight sets must really disagree"
        assert results[1].max_abs_error[name] == pytest.approx(expected, abs=1e-4), name
