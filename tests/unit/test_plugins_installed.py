"""Backend discovery with real plugin distributions installed into a temporary folder: the
`hotswap backends` table, and discovery and chain selection over them in process.

The plugins live in tests/plugins/ (dummy_ok: backend `dummy`; dummy_broken: `broken`
raising ImportError and `exits` calling sys.exit(1) at import). They are copied and
installed with `pip install --target` into a temporary folder, never into the venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.registry import discover_backends
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig
from hotswap.models.sources import ModelSource

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the installed dummy_ok and dummy_broken distributions."""
    root = tmp_path_factory.mktemp("plugins")
    sources = []
    for name in ("dummy_ok", "dummy_broken"):
        # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repo.
        shutil.copytree(PLUGINS / name, root / "src" / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        sources.append(str(root / "src" / name))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), *sources, "-q"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    assert list(site.glob("hotswap_dummy_ok-*.dist-info")) and list(site.glob("hotswap_dummy_broken-*.dist-info"))
    return site


def _run_backends_cli(site: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HOTSWAP_BACKENDS"}
    environ.update(PYTHONPATH=str(site), COLUMNS="250", PYTHONIOENCODING="utf-8", **env)
    return subprocess.run([sys.executable, "-m", "hotswap.cli", "backends"], capture_output=True, text=True,
                          env=environ, timeout=300)


def parse_backends_table(text: str) -> dict[str, dict]:
    """`hotswap backends` table -> {backend: {"distribution": ..., "targets": {target: status}}}.

    rich wraps long cells onto continuation lines (empty backend and target cells); their
    text is joined back onto the cell above with single spaces.
    """
    rows: dict[str, dict] = {}
    current: dict | None = None
    last_target: str | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) != 5:
            continue
        backend, distribution, _runtime, target, status = cells
        if backend:
            current = rows.setdefault(backend, {"distribution": distribution, "targets": {}})
            last_target = None
        elif current is not None and distribution:
            current["distribution"] += " " + distribution
        if current is None:
            continue
        if target:
            current["targets"][target] = status
            last_target = target
        elif last_target is not None and status:
            current["targets"][last_target] += " " + status
    return rows


@pytest.fixture(scope="module")
def backends_table(plugin_site) -> dict[str, dict]:
    result = _run_backends_cli(plugin_site)
    assert result.returncode == 0, f"hotswap backends failed:\n{result.stdout}\n{result.stderr}"
    table = parse_backends_table(result.stdout + result.stderr)
    assert table, f"no table in the output:\n{result.stdout}\n{result.stderr}"
    return table


# -- `hotswap backends` with the installed plugins ------------------------------------------

def test_cli_lists_import_error_with_its_text(backends_table):
    broken = backends_table["broken"]
    assert broken["distribution"] == "hotswap-dummy-broken 0.1.0"
    status = broken["targets"]["-"]
    assert status.startswith("import failed: ImportError: vendor SDK libfoo.so not found"), status
    assert re.search(r"broken\.py:\d+", status), f"the location of the failure is not shown: {status}"


def test_cli_lists_sys_exit_at_import(backends_table):
    exits = backends_table["exits"]
    assert exits["distribution"] == "hotswap-dummy-broken 0.1.0"
    status = exits["targets"]["-"]
    assert status.startswith("import failed:") and "sys.exit(1)" in status, status
    assert re.search(r"exits\.py:\d+", status), f"should point at the module that called sys.exit: {status}"


def test_cli_builtins_still_ok_next_to_broken_plugins(backends_table):
    for name in ("torch", "onnxruntime"):
        assert backends_table[name]["distribution"].startswith("hotswap "), backends_table[name]
        assert backends_table[name]["targets"]["default"] == "ok", backends_table[name]
    # Accelerator targets are probed and answered with a reason, never a crash.
    assert "cuda" in backends_table["torch"]["targets"]
    assert "ascend" in backends_table["onnxruntime"]["targets"]
    assert all("probe raised" not in s for t in backends_table.values() for s in t["targets"].values())


def test_cli_lists_working_plugin(backends_table):
    dummy = backends_table["dummy"]
    assert dummy["distribution"] == "hotswap-dummy-ok 0.1.0"
    assert dummy["targets"] == {"default": "ok"}


def test_cli_respects_hotswap_backends(plugin_site):
    result = _run_backends_cli(plugin_site, HOTSWAP_BACKENDS="dummy,onnxruntime")
    assert result.returncode == 0, result.stderr
    table = parse_backends_table(result.stdout)
    assert set(table) == {"dummy", "onnxruntime"}, table


# -- in process: the installed plugins through discovery and chain selection ------------------

def test_discovery_and_selection_with_installed_plugins(plugin_site, tmp_path, monkeypatch):
    monkeypatch.delenv("HOTSWAP_BACKENDS", raising=False)
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = discover_backends()
    assert {"torch", "onnxruntime", "dummy"} <= set(registry.available)
    assert registry.distributions["dummy"] == "hotswap-dummy-ok 0.1.0"
    assert registry.failed["broken"].startswith("ImportError: vendor SDK libfoo.so not found")
    assert "sys.exit(1)" in registry.failed["exits"]

    artifact = tmp_path / "model.dummy"
    artifact.write_text("weights")
    model = ModelConfig(name="m", source=str(artifact), backends=[{"name": "broken"}, {"name": "exits"},
                                                                     {"name": "onnxruntime"}, {"name": "dummy"}])
    selection, backend = select_backend(model, ModelSource([artifact]), registry)
    try:
        assert selection.position == 3 and selection.backend_cls.name == "dummy"
        reasons = [s.reason for s in selection.skipped]
        assert reasons[0].startswith("backend 'broken' failed to import: ImportError: vendor SDK libfoo.so not found")
        assert "sys.exit(1)" in reasons[1]
        assert reasons[2] == "backend 'onnxruntime' loads .onnx files; the source has model.dummy"
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(backend.infer({"x": x})["y"], x * 2)
        assert backend.describe()["device"] == "cpu"
    finally:
        backend.close()
