"""builtin:minilm preparation: artifacts, cache hits, concurrency and recovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hotswap.models.minilm import prepare

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def final_dirs(home: Path) -> list[Path]:
    return sorted(p for p in (home / "minilm").iterdir() if p.is_dir() and not p.name.startswith("."))


def temp_dirs(home: Path) -> list[Path]:
    return sorted((home / "minilm").glob(".tmp-*"))


def copy_cache(source, home: Path) -> Path:
    """A private copy of the prepared folder under `home` (real copies: tests damage them)."""
    target = home / "minilm" / source.base_dir.name
    shutil.copytree(source.base_dir, target)
    return target


def test_artifacts(minilm_source):
    import onnx
    import torch

    folder = minilm_source.base_dir
    assert [p.name for p in minilm_source.artifacts] == ["model.onnx", "model.pt2"]
    assert minilm_source.artifact_for((".onnx",)) == folder / "model.onnx"
    assert minilm_source.processor.name == "text-embedding"
    assert minilm_source.processor.model_extra == {"tokenizer": "tokenizer.json", "max_length": 256}
    assert minilm_source.notes["prepared"] in ("built", "cache")
    assert (folder / "tokenizer.json").is_file()

    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.pt2", "tokenizer.json"}
    assert manifest["torch"] == torch.__version__ and manifest["recipe_version"]
    for name, entry in manifest["files"].items():
        assert (folder / name).stat().st_size == entry["size"] and len(entry["sha256"]) == 64

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 14
    INT64, FLOAT = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT

    def spec(value):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        return value.name, value.type.tensor_type.elem_type, dims

    assert [spec(i) for i in model.graph.input] == [(n, INT64, ["batch", "sequence"]) for n in INPUTS]
    assert [spec(o) for o in model.graph.output] == [("token_embeddings", FLOAT, ["batch", "sequence", 384])]

    module = torch.export.load(str(folder / "model.pt2")).module()
    for shape in [(1, 4), (3, 7), (2, 512)]:
        ids = torch.randint(1000, 2000, shape)
        with torch.inference_mode():
            assert module(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape == (*shape, 384)


def test_second_call_is_a_cache_hit(minilm_source):
    home = minilm_source.base_dir.parent.parent
    start = time.perf_counter()
    again = prepare(home)
    assert time.perf_counter() - start < 2
    assert again.notes["prepared"] == "cache" and float(again.notes["seconds"]) < 2
    assert again.artifacts == minilm_source.artifacts


def test_leftover_temp_dir_is_ignored(minilm_source, tmp_path):
    copy_cache(minilm_source, tmp_path)
    junk = tmp_path / "minilm" / ".tmp-crashed-1234"
    junk.mkdir()
    (junk / "model.onnx").write_bytes(b"half an onnx file")
    source = prepare(tmp_path)
    assert source.notes["prepared"] == "cache"
    assert source.base_dir.name == minilm_source.base_dir.name


def test_corrupted_artifact_is_rebuilt(minilm_source, tmp_path):
    folder = copy_cache(minilm_source, tmp_path)
    junk = tmp_path / "minilm" / ".tmp-crashed-1234"
    junk.mkdir()
    with (folder / "model.onnx").open("r+b") as fh:
        fh.truncate(1000)
    source = prepare(tmp_path)
    assert source.notes["prepared"] == "built"
    assert final_dirs(tmp_path) == [folder] and temp_dirs(tmp_path) == []  # the crashed run's folder is gone
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "model.onnx").stat().st_size == manifest["files"]["model.onnx"]["size"] > 1000
    assert prepare(tmp_path).notes["prepared"] == "cache"


def test_concurrent_processes_build_once(tmp_path):
    script = ("import json, sys; from pathlib import Path; from hotswap.models.minilm import prepare; "
              "s = prepare(Path(sys.argv[1]), progress=sys.argv[2] == '1'); "
              "print(json.dumps({'notes': s.notes, 'artifacts': [str(p) for p in s.artifacts]}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), flag], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for flag in ("1", "0")]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["notes"]["prepared"] for r in results) == ["built", "cache"]
    assert results[0]["artifacts"] == results[1]["artifacts"]
    [folder] = final_dirs(tmp_path)
    assert temp_dirs(tmp_path) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert (folder / name).stat().st_size == entry["size"]


def test_build_failure_leaves_no_partial_folder(tmp_path, monkeypatch):
    from hotswap.models import minilm

    def broken(what, got, expected):
        raise minilm.PreparationError(f"{what}: differs from torch by 1 (> 0.0001)")

    monkeypatch.setattr(minilm, "_compare", broken)
    with pytest.raises(minilm.PreparationError, match="model.onnx"):
        prepare(tmp_path)
    assert final_dirs(tmp_path) == [] and temp_dirs(tmp_path) == []


def test_onnx_check_tolerance():
    from hotswap.models import minilm

    base = np.zeros((2, 3, 4), np.float32)
    minilm._compare("x", base + 5e-5, base)
    with pytest.raises(minilm.PreparationError, match="differs from torch"):
        minilm._compare("x", base + 1e-3, base)
    with pytest.raises(minilm.PreparationError, match="shape"):
        minilm._compare("x", base[:1], base)
