"""eventsink.build: one construction path, its defaults from the option catalogue."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

import eventsink
import eventsink.testing
from eventsink import builder
from eventsink.builder import build, configure
from eventsink.config import (
    DELIVERY_OPTIONS,
    ENTRY_POINTS,
    PIPELINE_OPTIONS,
    DeliverySettings,
    EntryPoint,
    Settings,
)
from eventsink.exceptions import ConfigError
from eventsink.pipeline.pipeline import default_outbox_path

PACKAGE = Path(eventsink.__file__).parent


class TestSettingsFromTheCatalogue:
    """The settings dataclasses take their fields and defaults from the options."""

    def test_delivery_settings_has_a_field_per_option_with_its_default(self):
        fields = {field.name: field.default for field in dataclasses.fields(DeliverySettings)}
        assert fields == {option.name: option.default for option in DELIVERY_OPTIONS}

    def test_settings_has_the_pipeline_options_plus_instance_sinks_and_extra(self):
        fields = {field.name: field for field in dataclasses.fields(Settings)}
        options = {option.name: option.default for option in PIPELINE_OPTIONS}
        assert set(fields) == set(options) | {"sinks", "extra"}
        for name, default in options.items():
            if name != "instance":  # required: configure() resolves it to the host name
                assert fields[name].default == default, name

    def test_settings_are_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            DeliverySettings().batch_limit = 5  # type: ignore[misc]


class TestEntryPoints:
    """What differs between the ways in is one table, and the user's keys always win."""

    def test_client_and_cli_agree_on_the_default_sink(self, tmp_path):
        client = build({"outbox": ":memory:", "path": str(tmp_path / "c.db")})
        cli = build({"outbox": ":memory:", "path": str(tmp_path / "c.db")}, entry_point="cli")
        assert client.settings.sinks[0].type == cli.settings.sinks[0].type == "sqlite"

    def test_datasette_defaults_apply_beneath_the_config(self):
        config = {"api_url": "http://127.0.0.1:1/data/-/create", "outbox": ":memory:"}
        (sink,) = configure(config, entry_point="datasette").sinks
        assert sink.type == "datasette"
        assert (sink.delivery.max_rate, sink.delivery.concurrency) == (10, 2)
        assert sink.delivery.batch_limit == DeliverySettings().batch_limit  # the catalogue's
        (sink,) = configure({**config, "max_rate": 50}, entry_point="datasette").sinks
        assert sink.delivery.max_rate == 50

    def test_send_reads_in_bigger_batches_unless_told(self):
        config = {"sink": "null", "outbox": ":memory:"}
        assert configure(config, entry_point="send").sinks[0].delivery.batch_limit == 1000
        told = configure({**config, "batch_limit": 7}, entry_point="send")
        assert told.sinks[0].delivery.batch_limit == 7
        assert configure(config).sinks[0].delivery.batch_limit == 100

    @pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
    def test_an_entry_point_differs_from_the_client_only_where_its_row_says(self, name):
        config = {"sink": "null", "outbox": ":memory:", "instance": "x"}
        (client,) = configure(config).sinks
        (other,) = configure(config, entry_point=name).sinks
        mine, theirs = dataclasses.asdict(client.delivery), dataclasses.asdict(other.delivery)
        differing = {key for key in mine if mine[key] != theirs[key]}
        assert differing == set(ENTRY_POINTS[name].defaults) - set(ENTRY_POINTS["client"].defaults)
        assert (other.type, other.options) == (client.type, client.options)

    def test_unknown_entry_point_lists_the_known_ones(self):
        with pytest.raises(ValueError, match=r"'clinet'.*client"):
            configure({"sink": "null"}, entry_point="clinet")

    def test_an_entry_point_cannot_default_an_unknown_option(self):
        with pytest.raises(ValueError, match="batch_limt"):
            EntryPoint("x", "null", "why", defaults={"batch_limt": 5})

    @pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
    def test_every_entry_point_names_a_bad_key(self, name):
        with pytest.raises(ConfigError) as info:
            configure({"sink": "null", "batch_limit": "many"}, entry_point=name)
        assert info.value.key == "batch_limit"


class TestOutbox:
    """The outbox path is absolute; only the Datasette plugin leaves it to Datasette."""

    def test_the_default_is_the_shared_file(self):
        assert configure({"sink": "null"}).outbox == os.path.abspath(default_outbox_path())

    def test_a_relative_path_is_made_absolute(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        settings = configure({"sink": "null", "outbox": "box.db"}, entry_point="cli")
        assert settings.outbox == str(tmp_path / "box.db")

    def test_memory_stays_memory(self):
        assert configure({"sink": "null", "outbox": ":memory:"}).outbox == ":memory:"

    def test_the_plugin_keeps_none_for_the_internal_database(self):
        assert configure({"sink": "null"}, entry_point="datasette").outbox is None

    def test_consume_has_no_outbox(self):
        assert configure({"sink": "null"}, entry_point="consume").outbox is None


class TestSinkNames:
    """CLI entry points key an unnamed sink by its destination; others by its name."""

    def test_cli_names_an_unnamed_sink_after_its_destination(self, tmp_path):
        path = tmp_path / "e.jsonl"
        config = {"sink": "file", "path": str(path), "outbox": ":memory:"}
        assert list(build(config, entry_point="cli").lanes) == [f"file {path}"]
        assert list(build(config).lanes) == ["file"]

    def test_an_explicit_name_is_kept(self, tmp_path):
        path = str(tmp_path / "e.jsonl")
        config = {
            "outbox": ":memory:",
            "sinks": [
                {"type": "file", "path": path},
                {"type": "file", "path": path, "name": "copy"},
                {"type": "file", "path": path, "name": "other"},
            ],
        }
        pipeline = build(config, entry_point="cli")
        assert list(pipeline.lanes) == [f"file {path}", "copy", "other"]
        assert [sink.name for sink in pipeline.settings.sinks] == list(pipeline.lanes)

    def test_two_unnamed_sinks_of_one_type_are_refused(self, tmp_path):
        path = str(tmp_path / "e.jsonl")
        config = {"outbox": ":memory:", "sinks": [{"type": "file", "path": path}] * 2}
        with pytest.raises(ConfigError, match="two sinks are named 'file'"):
            build(config)


class TestBuild:
    """build() gives an unstarted Pipeline whose sinks are the configured ones."""

    def test_builds_a_pipeline_with_the_plugin_manager_given(self, tmp_path):
        pm = eventsink.testing.plugin_manager(entry_points=False)
        pipeline = build({"sink": "memory", "outbox": ":memory:"}, pm=pm)
        assert isinstance(pipeline, eventsink.Pipeline)
        assert pipeline.pm is pm
        assert type(pipeline.sinks["memory"]).__name__ == "MemorySink"

    def test_accepts_settings_and_an_outbox(self):
        outbox = eventsink.MemoryOutbox()
        settings = configure({"sink": "null"}, entry_point="datasette")
        pipeline = build(settings, entry_point="datasette", outbox=outbox)
        assert pipeline.outbox is outbox
        assert pipeline.settings is settings

    def test_a_sink_rejecting_its_options_is_a_config_error(self):
        with pytest.raises(ConfigError) as info:
            build({"sink": "datasette", "api_url": "not a url", "outbox": ":memory:"})
        assert "api_url" in str(info.value)


def test_only_the_builder_parses_a_configuration():
    """``parse_config(`` is called in one place outside config.py: the builder."""
    callers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "config.py" and re.search(r"\bparse_config\(", path.read_text())
    )
    assert callers == [Path(builder.__file__).name]
