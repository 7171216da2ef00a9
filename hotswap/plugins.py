"""Entry-point discovery, shared by backends (`hotswap.backends`) and processors (`hotswap.processors`).

Built-ins are registered through the same groups in pyproject.toml, so built-ins and plugins
take one code path. A plugin whose import fails (ImportError, SystemExit from a vendor SDK,
anything) is recorded with its error text and the file:line that raised it; it never hides
the others and is never silently dropped.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class PluginRegistry(Generic[T]):
    """Plugins that imported (`available`) and those that did not (`failed`, name -> error).

    `distributions` maps each name to the "dist version" that registered it, where known.
    """

    available: dict[str, type[T]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, str] = field(default_factory=dict)
    #: Entry-point group and the word for one plugin ("backend"), for messages.
    group: str = ""
    kind: str = "plugin"

    def get(self, name: str) -> type[T] | None:
        return self.available.get(name)

    def why_missing(self, name: str) -> str:
        """A sentence for a config naming a plugin that is not available."""
        if name in self.failed:
            return f"{self.kind} '{name}' failed to import: {self.failed[name]}"
        known = ", ".join(sorted(self.available)) or "none"
        return f"{self.kind} '{name}' is not installed (no entry point in group '{self.group}'; available: {known})"


def _load(ep: EntryPoint, base_class: type) -> type:
    try:
        obj = ep.load()
    except SystemExit as exc:  # torch_npu calls sys.exit() when CANN is missing
        raise RuntimeError(f"import called sys.exit({exc.code})") from exc
    if not (isinstance(obj, type) and issubclass(obj, base_class)):
        raise TypeError(f"entry point {ep.value} is {obj!r}, expected a hotswap {base_class.__name__} subclass")
    if inspect.isabstract(obj):  # e.g. a backend written against an older contract, caught here, not at load
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise TypeError(f"entry point {ep.value} is abstract: {obj.__name__} does not implement {missing}")
    name = getattr(obj, "name", None)
    if name != ep.name:  # `name` is what configs say; a mismatch would make two names for one plugin
        raise TypeError(f"entry point name '{ep.name}' differs from {obj.__name__}.name '{name}'")
    return obj


def _describe_failure(exc: Exception) -> str:
    """`Type: message (at file:line)`, pointing at the plugin code that raised, not at this module."""
    origin: BaseException = exc.__cause__ if isinstance(exc.__cause__, SystemExit) else exc
    last = traceback.extract_tb(origin.__traceback__)[-1:] if origin.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def discover(group: str, base_class: Any, allowed: Collection[str] | None = None,
             entries: Iterable[EntryPoint] | None = None, kind: str = "plugin") -> PluginRegistry[Any]:
    """Import every entry point of `group` (or those in `entries`) that is a `base_class` subclass.

    Only names in `allowed` are imported when it is given; the others are not even recorded.
    `base_class` is typed Any because mypy refuses an abstract class where `type[T]` is expected;
    callers narrow the result with their own registry type (see `discover_backends`).
    """
    registry: PluginRegistry[Any] = PluginRegistry(group=group, kind=kind)
    for ep in entry_points(group=group) if entries is None else entries:
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.dist is not None:
            registry.distributions[ep.name] = f"{ep.dist.name} {ep.dist.version}"
        try:
            registry.available[ep.name] = _load(ep, base_class)
        except Exception as exc:  # every failure is reported by name, never raised past the others
            registry.failed[ep.name] = _describe_failure(exc)
    return registry
