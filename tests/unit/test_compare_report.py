"""`hotswap compare` as the gate of a hardware move: batch sizes × chain entries against a reference
entry, JSON and self-contained HTML reports, and an exit status that thresholds decide.

The chain mixes two weight sets on purpose (a folder whose .onnx and .pt2 come from different
seeds), so the torch entry really disagrees with onnxruntime and the thresholds have something
to catch. Runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hotswap.compare import sample_inputs
from hotswap.testing import TINY_SIGNATURE, TinyModels, build_tiny_models

TINY_IO = {"inputs": [s.model_dump() for s in TINY_SIGNATURE.inputs],
           "outputs": [s.model_dump() for s in TINY_SIGNATURE.outputs]}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, TinyModels, TinyModels]:
    """A config whose chain is onnxruntime (weights a), onnxruntime unoptimised (a), torch (weights b), missing."""
    root = tmp_path_factory.mktemp("compare")
    a, b = build_tiny_models(root / "a", seed=0), build_tiny_models(root / "b", seed=1)
    folder = root / "mixed"
    folder.mkdir()
    shutil.copy(a.onnx, folder / "tiny.onnx")
    shutil.copy(b.exported, folder / "tiny.pt2")
    config = root / "compare.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "tiny", "source": str(folder), **TINY_IO, "backends": [
        {"name": "onnxruntime"}, {"name": "onnxruntime", "graph_optimization_level": "disable"},
        {"name": "torch", "device": "cpu"}, {"name": "not_installed_vendor"}]}]}))
    return config, a, b


def compare(config: Path, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "hotswap.cli", "compare", "-c", str(config), "--runs", "3",
                             "--batch", "1", "--batch", "4", "--json", str(report), *args],
                            capture_output=True, text=True, timeout=300, env=os.environ | {"COLUMNS": "200"})
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(report.read_text()), result.stdout + result.stderr


def true_difference(a: TinyModels, b: TinyModels, batch: int) -> float:
    inputs = sample_inputs(TINY_SIGNATURE, batch, seed=batch)
    want_a, want_b = a.reference(inputs), b.reference(inputs)
    return max(float(np.abs(want_a[n] - want_b[n]).max()) for n in ("y", "z"))


def test_every_entry_and_batch_size_is_measured_and_loose_thresholds_pass(mixed, tmp_path):
    config, a, b = mixed
    status, report, _ = compare(config, tmp_path, "--max-abs-error", "10", "--min-cosine", "-1")
    assert status == 0 and report["passed"] and report["failures"] == []
    assert report["reference"] == 0 and report["batches"] == [1, 4]
    same, unoptimised, torch, missing = report["entries"]
    for entry in (same, unoptimised, torch):
        assert [r["batch"] for r in entry["results"]] == [1, 4] and entry["device"] == "cpu"
        for r in entry["results"]:
            assert 0 < r["p50_ms"] <= r["p99_ms"] and r["rows_per_s"] > 0
    assert same["max_abs_error"] == 0.0 and same["min_cosine"] == pytest.approx(1.0)
    assert unoptimised["max_abs_error"] < 1e-5 and unoptimised["min_cosine"] > 0.9999
    for r in torch["results"]:
        assert r["max_abs_error"] == pytest.approx(true_difference(a, b, r["batch"]), abs=1e-4)
    assert torch["max_abs_error"] > 1e-3
    assert "not installed" in missing["skipped"] and missing["results"] == []


def test_a_threshold_an_entry_misses_exits_1_and_names_it(mixed, tmp_path):
    config, _, _ = mixed
    status, report, output = compare(config, tmp_path, "--max-abs-error", "1e-3")
    assert status == 1 and not report["passed"]
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("#2 torch[cpu]: max abs error")
    assert "FAIL #2 torch[cpu]" in output


def test_the_reference_entry_can_be_chosen(mixed, tmp_path):
    config, a, b = mixed
    _, report, _ = compare(config, tmp_path, "--reference", "2")
    assert report["reference"] == 2
    assert report["entries"][2]["max_abs_error"] == 0.0
    first = report["entries"][0]["results"][1]
    assert first["max_abs_error"] == pytest.approx(true_difference(a, b, 4), abs=1e-4)


def test_the_html_report_is_self_contained_with_its_plots(mixed, tmp_path):
    config, _, _ = mixed
    page = tmp_path / "report.html"
    status, _, _ = compare(config, tmp_path, "--html", str(page), "--min-cosine", "0.5")
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.count("<svg") == 3
    for outside in ("http://", "https://", "<script", "src=", "<link"):
        assert outside not in text, f"the report must not load anything ({outside})"
    assert "#2 torch" in text and "skipped: " in text and "4</td>" in text
    assert ("FAIL" in text) == (status == 1)
