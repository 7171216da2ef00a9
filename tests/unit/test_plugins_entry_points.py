"""Backend discovery from in-process entry points, for every way an import can fail (ImportError,
sys.exit, a runtime error, an object that is no Backend, a name mismatch, the old contract), a chain
walking past them, $HOTSWAP_BACKENDS restricting discovery, and the generic `discover` for processors."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint

import pytest

from hotswap.backends.base import Backend
from hotswap.backends.registry import ENTRY_POINT_GROUP, discover_backends
from hotswap.backends.selection import select_backend
from hotswap.config import ModelConfig
from hotswap.errors import BackendUnavailable
from hotswap.models.processing import IdentityProcessor, Processor
from hotswap.models.sources import ModelSource
from hotswap.plugins import discover

BUILTINS = [EntryPoint("torch", "hotswap.backends.torch_backend:TorchBackend", ENTRY_POINT_GROUP),
            EntryPoint("onnxruntime", "hotswap.backends.onnxruntime_backend:OnnxRuntimeBackend", ENTRY_POINT_GROUP)]

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
