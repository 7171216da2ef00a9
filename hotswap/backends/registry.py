"""Backend discovery over the entry-point group `hotswap.backends`.

Built-in backends are registered through the same group in pyproject.toml, so there is
one code path for built-ins and plugins. A backend whose import fails (ImportError,
SystemExit from a vendor SDK, anything) is recorded with its error text and reported;
it never hides the others and is never silently dropped.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from hotswap.backends.base import Backend

ENTRY_POINT_GROUP = "hotswap.backends"


@dataclass
class BackendRegistry:
    """Backends that imported (`available`) and those that did not (`failed`, name -> error)."""

    available: dict[str, type[Backend]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> type[Backend] | None:
        return self.available.get(name)

    def why_missing(self, name: str) -> str:
        """A sentence for a chain entry naming a backend that is not available."""
        if name in self.failed:
            return f"backend '{name}' failed to import: {self.failed[name]}"
        known = ", ".join(sorted(self.available)) or "none"
        return f"backend '{name}' is not installed (no entry point in group '{ENTRY_POINT_GROUP}'; available: {known})"


def _allowed_names() -> set[str] | None:
    raw = os.environ.get("HOTSWAP_BACKENDS", "").strip()
    if not raw:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_entry_point(ep: EntryPoint) -> type[Backend]:
    try:
        obj = ep.load()
    except SystemExit as exc:  # torch_npu calls sys.exit() when CANN is missing
        raise RuntimeError(f"import called sys.exit({exc.code})") from exc
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise TypeError(f"entry point {ep.value} is {obj!r}, expected a hotswap Backend subclass")
    if obj.name != ep.name:
        raise TypeError(f"entry point name '{ep.name}' differs from {obj.__name__}.name '{obj.name}'")
    return obj


def discover_backends(entries: list[EntryPoint] | None = None) -> BackendRegistry:
    """Import every backend registered under `hotswap.backends` (or those in `entries`).

    `HOTSWAP_BACKENDS=torch,onnxruntime` restricts which are imported.
    """
    if entries is None:
        entries = list(entry_points(group=ENTRY_POINT_GROUP))
    allowed = _allowed_names()
    registry = BackendRegistry()
    for ep in entries:
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.dist is not None:
            registry.distributions[ep.name] = f"{ep.dist.name} {ep.dist.version}"
        try:
            registry.available[ep.name] = _load_entry_point(ep)
        except Exception as exc:
            # For sys.exit() at import, point at the plugin code that called it, not at this module.
            origin = exc.__cause__ if isinstance(exc.__cause__, SystemExit) else exc
            last = traceback.extract_tb(origin.__traceback__)[-1:] if origin.__traceback__ else []
            where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
            registry.failed[ep.name] = f"{type(exc).__name__}: {exc}{where}"
    return registry
