"""Plugin discovery: built-ins plus third-party analyses registered under ``dtinterp.analyses``.

Built-ins are the modules of :mod:`dtinterp.plugins.builtin` (each defines one :class:`Analysis`
subclass). Third-party packages register an ``Analysis`` subclass under the entry-point group
``dtinterp.analyses``. A plugin that fails to import, declares itself invalidly, or clashes with an id
already taken is recorded as a :class:`PluginFailure` and skipped; the registry keeps working.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import threading
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from dtinterp.plugins import builtin
from dtinterp.plugins.api import (
    CATEGORIES,
    Analysis,
    AnalysisContext,
    AnalysisResult,
    PluginError,
    PluginFailure,
)

ENTRY_POINT_GROUP = "dtinterp.analyses"


class Registry:
    """The analyses available in this process, by id, with the failures met while loading them."""

    def __init__(self) -> None:
        self.plugins: dict[str, Analysis] = {}
        self.failures: list[PluginFailure] = []

    def add(self, obj: Any, name: str) -> None:
        """Register an ``Analysis`` subclass or instance found under ``name``; record why if not."""
        cls = obj if inspect.isclass(obj) else type(obj)
        try:
            if not (inspect.isclass(cls) and issubclass(cls, Analysis)):
                raise ValueError(f"{obj!r} is not an Analysis subclass")
            if inspect.isabstract(cls):
                raise ValueError(f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)}")
            cls.check_declaration()
            if cls.id in self.plugins:
                raise ValueError(
                    f"id {cls.id!r} is already registered by {type(self.plugins[cls.id]).__module__}"
                )
            self.plugins[cls.id] = obj if not inspect.isclass(obj) else cls()
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is reported, never raised
            self.failures.append(PluginFailure(name, "declaration", _one_line(exc)))

    def get(self, plugin_id: str) -> Analysis:
        """The analysis with ``plugin_id``; an unknown id is a :class:`PluginError` listing the known ones."""
        if plugin_id not in self.plugins:
            raise PluginError(
                f"unknown analysis {plugin_id!r} (available: {', '.join(sorted(self.plugins))})"
            )
        return self.plugins[plugin_id]

    def by_category(self) -> dict[str, list[Analysis]]:
        """Analyses grouped by category, in category order then by title."""
        return {
            c: sorted((p for p in self.plugins.values() if p.category == c), key=lambda p: p.title)
            for c in CATEGORIES
        }

    def run(
        self, plugin_id: str, ctx: AnalysisContext, params: Mapping[str, Any] | None = None
    ) -> AnalysisResult:
        """Run one analysis; a parameter error propagates, any other exception becomes a one-line PluginError."""
        plugin = self.get(plugin_id)
        resolved = plugin.resolve_params(params, ctx.checkpoint)
        try:
            return plugin.compute(ctx, resolved)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing plugin must not take the caller down
            failure = PluginFailure(plugin_id, "compute", _one_line(exc))
            self.failures.append(failure)
            raise PluginError(str(failure)) from exc

    def figures(self, plugin_id: str, result: AnalysisResult) -> list[Any]:
        """Figures of a result; an exception becomes a one-line PluginError."""
        try:
            return self.get(plugin_id).figures(result)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            failure = PluginFailure(plugin_id, "figures", _one_line(exc))
            self.failures.append(failure)
            raise PluginError(str(failure)) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _builtin_modules() -> Iterable[str]:
    for info in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield f"{builtin.__name__}.{info.name}"


def load_registry(include_entry_points: bool = True, eps: Iterable[EntryPoint] | None = None) -> Registry:
    """Discover built-ins and (unless disabled) entry-point plugins into a fresh :class:`Registry`."""
    reg = Registry()
    for module_name in _builtin_modules():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            reg.failures.append(PluginFailure(module_name, "import", _one_line(exc)))
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Analysis) and obj is not Analysis and obj.__module__ == module.__name__:
                reg.add(obj, f"{module_name}:{obj.__name__}")
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps:
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                reg.failures.append(PluginFailure(ep.name, "import", _one_line(exc)))
                continue
            reg.add(obj, ep.name)
    return reg


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = load_registry()
        return _default


def _fresh_lock_after_fork() -> None:
    """A forked child (the app's background jobs) starts with the lock released: a thread of the parent
    that held it at the fork does not exist in the child, so it would never be released there."""
    global _default_lock
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)
