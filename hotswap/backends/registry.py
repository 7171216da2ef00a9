"""Backend discovery over the entry-point group `hotswap.backends`.

Built-in backends are registered through the same group in pyproject.toml, so there is
one code path for built-ins and plugins (`hotswap.plugins.discover`, shared with
processors). A backend whose import fails (ImportError, SystemExit from a vendor SDK,
anything) is recorded with its error text and reported; it never hides the others and is
never silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint

from hotswap.backends.base import Backend
from hotswap.plugins import PluginRegistry, discover

ENTRY_POINT_GROUP = "hotswap.backends"


@dataclass
class BackendRegistry(PluginRegistry[Backend]):
    """Backends that imported (`available`) and those that did not (`failed`, name -> error)."""

    group: str = ENTRY_POINT_GROUP
    kind: str = "backend"


def _allowed_names() -> set[str] | None:
    raw = os.environ.get("HOTSWAP_BACKENDS", "").strip()
    if not raw:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def discover_backends(entries: list[EntryPoint] | None = None) -> BackendRegistry:
    """Import every backend registered under `hotswap.backends` (or those in `entries`).

    `HOTSWAP_BACKENDS=torch,onnxruntime` restricts which are imported.
    """
    found = discover(ENTRY_POINT_GROUP, Backend, _allowed_names(), entries, kind="backend")
    return BackendRegistry(available=found.available, failed=found.failed, distributions=found.distributions)
