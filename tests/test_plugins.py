"""Built-in plugins are registered once, the way third-party plugins are."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

from eventsink.plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent


def plugin_modules(name: str) -> set[str]:
    """Modules of the package ``name`` that implement a registration hook."""
    package = importlib.import_module(name)
    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "eventsink_register_sinks") or hasattr(
            module, "eventsink_register_sources"
        ):
            found.add(module.__name__)
    return found


class TestBuiltins:
    """DEFAULT_PLUGINS is the one list of built-in plugins."""

    def test_every_builtin_plugin_module_is_listed(self):
        modules = plugin_modules("eventsink.sinks") | plugin_modules("eventsink.sources")
        assert modules == set(DEFAULT_PLUGINS.values())

    def test_builtins_are_not_also_entry_points(self):
        tomllib = pytest.importorskip("tomllib")
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        declared = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
        assert [value for value in declared.values() if value.startswith("eventsink.")] == []

    @pytest.mark.parametrize("entry_points", [False, True])
    def test_each_builtin_is_registered_once_under_its_name(self, entry_points):
        pm = make_plugin_manager(entry_points=entry_points)
        for name, module in DEFAULT_PLUGINS.items():
            assert pm.get_plugin(name) is importlib.import_module(module)
        modules = [plugin.__name__ for plugin in pm.get_plugins() if hasattr(plugin, "__name__")]
        builtins = [name for name in modules if name in DEFAULT_PLUGINS.values()]
        assert sorted(builtins) == sorted(DEFAULT_PLUGINS.values())
