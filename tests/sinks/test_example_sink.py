"""The example third-party plugin in examples/example_sink works as a package would.

Installing it with pip in every test run would be slow and need a build backend from the
network, so the tests here check what installing provides, without installing: the entry point
declared in its pyproject.toml names a module that, registered with a plugin manager exactly as
``load_setuptools_entrypoints`` registers it, adds the ``csv`` sink; its own contract test runs
here too. ``.ci/run`` also pip-installs the example, and then the last test checks the real
entry point through installed metadata.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from eventsink import Client
from eventsink.plugins import ENTRY_POINT_GROUP, make_plugin_manager, sink_classes
from eventsink.testing import capture_events, plugin_manager

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "example_sink"
DISTRIBUTION = "eventsink-csv-example"
INSTALLED = EXAMPLE.parent.parent / ".ci" / "example-site"


def load(name: str, path: Path) -> ModuleType:
    """Import the module in ``path`` under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


csv_sink = load("eventsink_csv_sink", EXAMPLE / "eventsink_csv_sink.py")
# The example's own contract test class, collected here as a test class of this module.
TestCsvSinkContract = load("example_csv_contract", EXAMPLE / "test_csv_sink.py").TestCsvSinkContract


class TestExamplePackage:
    """The example declares an entry point that adds the csv sink."""

    def test_entry_point_names_the_module(self) -> None:
        """pyproject.toml's eventsink entry point points at the plugin module."""
        tomllib = pytest.importorskip("tomllib")
        project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
        assert project["entry-points"][ENTRY_POINT_GROUP] == {"csv": "eventsink_csv_sink"}
        assert (EXAMPLE / "eventsink_csv_sink.py").is_file()

    def test_registered_module_adds_the_sink(self) -> None:
        """Registered as an entry point would be, the module adds 'csv' beside the built-ins."""
        pm = make_plugin_manager(entry_points=False)
        pm.register(csv_sink, name="csv")
        classes = sink_classes(pm)
        assert classes["csv"] is csv_sink.CsvSink
        assert {"file", "stdout", "null"} <= set(classes)

    def test_configured_by_name_in_a_client(self, tmp_path: Path) -> None:
        """sink: csv works in a client configuration and stores every event once."""
        pm = make_plugin_manager(entry_points=False)
        pm.register(csv_sink, name="csv")
        path = tmp_path / "events.csv"
        with Client(pm=pm, sink="csv", path=str(path), outbox=":memory:") as client:
            ids = [client.write("visits", {"page": f"/{n}"}) for n in range(3)]
            assert client.flush(timeout=10)
        lines = path.read_text().splitlines()
        assert lines[0] == "id,table,instance,created,data"
        assert [line.split(",", 1)[0] for line in lines[1:]] == ids

    def test_enricher_adds_the_process_id(self) -> None:
        """The example's eventsink_enrich hook runs on every event."""
        pm = plugin_manager(entry_points=False)
        pm.register(csv_sink, name="csv")
        with capture_events(pm=pm) as capture:
            capture.write("visits", {"page": "/"})
            assert capture.events[0].data["pid"] > 0

    def test_installed_entry_point(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Pip-installed (``.ci/run`` installs it into INSTALLED), its entry point yields csv."""
        if not (INSTALLED / "eventsink_csv_sink.py").is_file():
            pytest.skip(f"run: pip install --no-deps --target {INSTALLED} {EXAMPLE}")
        # Its own directory, not the venv: its enricher would touch every other test's events.
        monkeypatch.syspath_prepend(str(INSTALLED))
        points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        assert points["csv"].value == "eventsink_csv_sink"
        assert importlib.metadata.distribution(DISTRIBUTION).version == "0.1.0"
        assert sink_classes(make_plugin_manager())["csv"].__name__ == "CsvSink"
