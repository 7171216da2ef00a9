"""Backend discovery: real plugin distributions installed into a temporary folder, plus
in-process entry points for every way an import can fail.

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
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.base import Backend
from hotswap.backends.registry import ENTRY_POINT_GROUP, discover_backends
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig
from hotswap.errors import BackendUnavailable
from hotswap.models.processing import IdentityProcessor, Processor
from hotswap.models.sources import ModelSource
from hotswap.plugins import discover

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
BUILTINS = [EntryPoint("torch", "hotswap.backends.torch_backend:TorchBackend", ENTRY_POINT_GROUP),
            EntryPoint("onnxruntime", "hotswap.backends.onnxruntime_backend:OnnxRuntimeBackend", ENTRY_POINT_GROUP)]


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


# -- in process: every failure mode, from EntryPoint objects ----------------------------------

FAILING_MODULES = {
    "import_error": 'raise ImportError("vendor SDK libbar.so not found")\n',
    "exits": "import sys\n\nsys.exit(3)\n",
    "runtime_error": 'raise RuntimeError("no device 0: driver version too old")\n',
    "plain": "thing = 42\n\n\ndef factory():\n    return None\n",
    # A backend written against the old contract: it overrides load() and has no _load().
    "old_contract": ("from hotswap.backends.base import Backend\n\n\nclass Old(Backend):\n    name = 'old'\n\n"
                     "    @classmethod\n    def probe(cls, options):\n        return None\n\n"
                     "    def load(self, artifact, options, declared=None):\n        return None\n\n"
                     "    def run(self, inputs):\n        return inputs\n\n"
                     "    def describe(self):\n        return {'device': 'cpu'}\n\n"
                     "    def close(self):\n        pass\n"),
}


@pytest.fixture
def failing_package(tmp_path, monkeypatch) -> str:
    """A package on sys.path whose modules fail (or hold no Backend) in different ways."""
    package = f"hs_failing_{abs(hash(str(tmp_path))) % 10**8}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, text in FAILING_MODULES.items():
        (root / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("HOTSWAP_BACKENDS", raising=False)
    return package


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, ENTRY_POINT_GROUP)


def test_failure_modes_are_recorded_and_never_hide_the_others(failing_package):
    pkg = failing_package
    registry = discover_backends(entries=[
        _ep("importerr", f"{pkg}.import_error:Backend"),
        BUILTINS[0],
        _ep("exits", f"{pkg}.exits:Backend"),
        _ep("runtimeerr", f"{pkg}.runtime_error:Backend"),
        _ep("notabackend", f"{pkg}.plain:thing"),
        _ep("function", f"{pkg}.plain:factory"),
        _ep("baseclass", "hotswap.backends.base:Backend"),
        _ep("mismatch", "hotswap.backends.torch_backend:TorchBackend"),
        _ep("noattr", "hotswap.backends.torch_backend:NoSuchBackend"),
        _ep("nomodule", f"{pkg}.does_not_exist:Backend"),
        BUILTINS[1],
    ])
    assert set(registry.available) == {"torch", "onnxruntime"}
    assert registry.available["torch"].name == "torch"
    failed = registry.failed
    assert set(failed) == {"importerr", "exits", "runtimeerr", "notabackend", "function", "baseclass", "mismatch",
                           "noattr", "nomodule"}

    assert failed["importerr"].startswith("ImportError: vendor SDK libbar.so not found (at ")
    assert re.search(r"import_error\.py:1\)$", failed["importerr"]), failed["importerr"]
    assert failed["exits"].startswith("RuntimeError: import called sys.exit(3)"), failed["exits"]
    assert re.search(r"exits\.py:3\)$", failed["exits"]), failed["exits"]
    assert failed["runtimeerr"].startswith("RuntimeError: no device 0: driver version too old")
    assert failed["notabackend"].startswith(
        f"TypeError: entry point {pkg}.plain:thing is 42, expected a hotswap Backend subclass")
    assert "expected a hotswap Backend subclass" in failed["function"]
    # The abstract base class is a Backend subclass of itself but has no `name`.
    assert failed["baseclass"].startswith(("TypeError", "AttributeError")), failed["baseclass"]
    assert failed["mismatch"].startswith(
        "TypeError: entry point name 'mismatch' differs from TorchBackend.name 'torch'"), failed["mismatch"]
    assert failed["noattr"].startswith("AttributeError:") and "NoSuchBackend" in failed["noattr"]
    assert failed["nomodule"].startswith("ModuleNotFoundError:") and "does_not_exist" in failed["nomodule"]

    # A chain naming a failed backend gets its import error as the reason.
    assert registry.why_missing("importerr") == f"backend 'importerr' failed to import: {failed['importerr']}"
    missing = registry.why_missing("nosuch")
    assert "backend 'nosuch' is not installed" in missing and "available: onnxruntime, torch" in missing


def test_a_chain_walks_past_failed_plugins(failing_package, tiny):
    registry = discover_backends(entries=[_ep("importerr", f"{failing_package}.import_error:Backend"),
                                          _ep("exits", f"{failing_package}.exits:Backend"), *BUILTINS])
    model = ModelConfig(name="m", source=str(tiny.onnx),
                        backends=[{"name": "importerr"}, {"name": "exits"}, {"name": "onnxruntime"}])
    selection, backend = select_backend(model, ModelSource([tiny.onnx]), registry)
    backend.close()
    assert selection.position == 2
    assert [s.label for s in selection.skipped] == ["importerr", "exits"]
    assert "vendor SDK libbar.so not found" in selection.skipped[0].reason
    assert "sys.exit(3)" in selection.skipped[1].reason

    strict = ModelConfig(name="m", source=str(tiny.onnx), backends=[{"name": "importerr"}])
    with pytest.raises(BackendUnavailable, match="libbar.so not found"):
        select_backend(strict, ModelSource([tiny.onnx]), registry)


def test_system_exit_is_not_swallowed_as_success(failing_package):
    """Only the entry point's own import is guarded; discovery itself returns normally."""
    registry = discover_backends(entries=[_ep("exits", f"{failing_package}.exits:Backend")])
    assert registry.available == {} and "sys.exit(3)" in registry.failed["exits"]


def test_hotswap_backends_restricts_discovery(monkeypatch, failing_package):
    monkeypatch.setenv("HOTSWAP_BACKENDS", "onnxruntime")
    registry = discover_backends()
    assert set(registry.available) == {"onnxruntime"}
    assert registry.failed == {}
    assert registry.distributions["onnxruntime"].startswith("hotswap ")

    # Entries not allowed are never imported, so their failures are not even recorded.
    monkeypatch.setenv("HOTSWAP_BACKENDS", " torch , onnxruntime ,")
    registry = discover_backends(entries=[_ep("importerr", f"{failing_package}.import_error:Backend"), *BUILTINS])
    assert set(registry.available) == {"torch", "onnxruntime"}
    assert registry.failed == {}

    monkeypatch.setenv("HOTSWAP_BACKENDS", "")
    registry = discover_backends(entries=BUILTINS)
    assert set(registry.available) == {"torch", "onnxruntime"}


def test_builtin_entry_points_are_registered(monkeypatch):
    monkeypatch.delenv("HOTSWAP_BACKENDS", raising=False)
    registry = discover_backends()
    assert {"torch", "onnxruntime"} <= set(registry.available)
    for name, cls in registry.available.items():
        assert issubclass(cls, Backend) and cls.name == name


def test_a_backend_on_the_old_contract_is_reported(failing_package):
    registry = discover_backends(entries=[_ep("old", f"{failing_package}.old_contract:Old")])
    assert registry.failed["old"].startswith(
        f"TypeError: entry point {failing_package}.old_contract:Old is abstract: Old does not implement _load")


def test_discover_is_generic_and_honours_allowed(failing_package):
    entries = [EntryPoint("identity", "hotswap.models.processing:IdentityProcessor", "hotswap.processors"),
               EntryPoint("broken", f"{failing_package}.import_error:Echo", "hotswap.processors")]
    registry = discover("hotswap.processors", Processor, allowed={"identity"}, entries=entries, kind="processor")
    assert registry.available == {"identity": IdentityProcessor} and registry.failed == {}
    assert registry.why_missing("nosuch") == ("processor 'nosuch' is not installed (no entry point in "
                                              "group 'hotswap.processors'; available: identity)")

