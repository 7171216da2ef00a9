"""Fallback chains and strict entries, through `hotswap serve` as a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
import yaml

from hotswap.testing import skip_if_ort_provider
from tests.e2e.test_serve_default import REPO, free_port, start_server, wait_ready


def serve_and_get_metadata(config_path, home, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(config_path, home, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        metadata = httpx.get(f"{url}/v2/models/minilm", timeout=10).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        return metadata, metrics, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_openvino_example_chain_picks_openvino_and_says_why(minilm_source, tmp_path):
    """examples/openvino.yaml: [onnxruntime CUDA, openvino CPU, onnxruntime CPU] -> OpenVINO here."""
    skip_if_ort_provider("CUDAExecutionProvider")
    metadata, metrics, log = serve_and_get_metadata(REPO / "examples" / "openvino.yaml",
                                                    minilm_source.base_dir.parents[1], tmp_path)
    assert metadata["backend"]["name"] == "openvino"
    assert metadata["backend"]["chain_position"] == 1
    assert metadata["backend"]["device"] == "cpu" and metadata["backend"]["precision"] == "f32"
    [skipped] = metadata["skipped"]
    assert skipped["position"] == 0 and "CUDAExecutionProvider" in skipped["reason"]
    assert "CUDAExecutionProvider" in log  # said at start
    assert 'hotswap_backend_selected{backend="openvino",device="cpu",model="minilm",position="1"' in metrics
    assert 'hotswap_backend_skipped{backend="onnxruntime[CUDAExecutionProvider]"' in metrics


@pytest.mark.slow
def test_missing_provider_and_unknown_plugin_fall_through(minilm_source, tmp_path):
    """A missing provider and a plugin that is not installed are skipped, each with its reason; torch serves."""
    skip_if_ort_provider("CUDAExecutionProvider")
    config = {"models": [{"name": "minilm", "source": "builtin:minilm", "backends": [
        {"name": "onnxruntime", "providers": ["CUDAExecutionProvider"]},
        {"name": "ascend_vendor_plugin", "device": "npu:0"},
        {"name": "torch", "device": "cpu"},
    ]}]}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(config))
    metadata, _, _ = serve_and_get_metadata(path, minilm_source.base_dir.parents[1], tmp_path)
    assert metadata["backend"]["name"] == "torch" and metadata["backend"]["chain_position"] == 2
    reasons = [s["reason"] for s in metadata["skipped"]]
    assert "CUDAExecutionProvider" in reasons[0]
    assert "'ascend_vendor_plugin' is not installed" in reasons[1]


@pytest.mark.parametrize(("example", "named"), [
    ("torch-cuda.yaml", "cuda"),
    ("onnxruntime-cuda.yaml", "CUDAExecutionProvider"),
])
def test_strict_entry_on_missing_device_fails_startup(example, named, minilm_source, tmp_path):
    """A one-entry chain is strict: no silent CPU run, start-up fails naming the device."""
    import torch

    if example.startswith("torch") and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here, so this chain loads")
    if example.startswith("onnxruntime"):
        skip_if_ort_provider("CUDAExecutionProvider")
    env_home = str(minilm_source.base_dir.parents[1])
    result = subprocess.run([sys.executable, "-m", "hotswap.cli", "serve", "--config", str(REPO / "examples" / example),
                             "--port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=240,
                            env={**__import__("os").environ, "HOTSWAP_HOME": env_home, "COLUMNS": "200"})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "no backend in its chain could load" in output
    assert named in output
