"""The fault-injecting backend plugin (tests/plugins/fault_backend), installed for real.

`install_fault_plugin` builds and installs the distribution with pip into a temporary site
folder (never the venv) and puts that folder on sys.path, so `discover_backends()` finds the
`fault` backend through its `hotswap.backends` entry point, exactly like a vendor plugin.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from api_support import LiveServer, running_server, server_section

from hotswap.backends.registry import BackendRegistry, discover_backends
from hotswap.config import parse_config
from hotswap.serve.app import create_app

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "fault_backend"


def install_fault_plugin(root: Path) -> Path:
    """pip-install the fault plugin into `root`/site and make it importable; returns the site folder."""
    root.mkdir(parents=True, exist_ok=True)
    site = root / "site"
    if not list(site.glob("hotswap_fault-*.dist-info")):
        # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repo.
        source = root / "src"
        shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"), dirs_exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "--target", str(site), str(source), "-q"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    return site


def fault_plugin_root(tmp_path_factory) -> Path:
    """Where the plugin is installed: the session's temp folder; with $HOTSWAP_TEST_PLUGIN_CACHE set
    (`make mutate`, which starts thousands of short sessions) a folder there named by a digest of the
    plugin's sources, so it is installed once and again only after the plugin changes."""
    cache = os.environ.get("HOTSWAP_TEST_PLUGIN_CACHE")
    if not cache:
        return tmp_path_factory.getbasetemp() / "fault_plugin"
    digest = hashlib.sha256()
    for path in sorted(p for p in PLUGIN.rglob("*") if p.is_file() and "egg-info" not in str(p)
                       and "build" not in p.relative_to(PLUGIN).parts and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(PLUGIN)).encode() + b"\0" + path.read_bytes())
    return Path(cache) / f"fault-{digest.hexdigest()[:16]}"


def fault_registry_for(tmp_path_factory) -> BackendRegistry:
    """Install the plugin once per session (or once per cache, see `fault_plugin_root`) and discover
    backends with it."""
    from filelock import FileLock

    root = fault_plugin_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):  # two mutation workers may start at once
        install_fault_plugin(root)
    registry = discover_backends()
    assert registry.get("fault") is not None, registry.failed
    return registry


def serve_models(stack: ExitStack, registry: BackendRegistry, tmp_path_factory, models: list[dict]) -> LiveServer:
    """A real server for `models`, stopped when `stack` closes."""
    config = parse_config({"server": server_section(tmp_path_factory), "models": models}, "test", registry)
    return stack.enter_context(running_server(create_app(config, registry)))


def wait_for(condition: Callable[[], object], timeout_s: float = 20.0, what: str = "condition") -> object:
    """Poll until `condition()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)
