"""Configuration: validated once, errors name the key, secrets never show."""

from __future__ import annotations

import pytest

from eventsink.config import Option, Secret, parse_config, validate_options
from eventsink.exceptions import ConfigError, UnknownPluginError
from eventsink.plugins import lookup, make_plugin_manager, sink_classes


@pytest.fixture
def sink_options():
    classes = sink_classes(make_plugin_manager())
    return lambda name, key: lookup(classes, name, "sink", key).options


class TestParseConfig:
    """parse_config() turns the one config shape into Settings or a clear error."""

    def test_single_sink_with_options_beside_it(self, sink_options):
        settings = parse_config(
            {"sink": "file", "path": "x.jsonl", "batch_limit": 7, "instance": "web-1"},
            sink_options,
        )
        (sink,) = settings.sinks
        assert (sink.type, sink.name, sink.options["path"]) == ("file", "file", "x.jsonl")
        assert sink.delivery.batch_limit == 7
        assert settings.instance == "web-1"

    def test_several_sinks_with_own_delivery_options(self, sink_options):
        settings = parse_config(
            {
                "batch_limit": 50,
                "sinks": [
                    {"type": "file", "path": "a.jsonl"},
                    {"type": "file", "name": "second", "path": "b.jsonl", "batch_limit": 5},
                ],
            },
            sink_options,
        )
        first, second = settings.sinks
        assert first.delivery.batch_limit == 50
        assert (second.name, second.delivery.batch_limit) == ("second", 5)

    def test_misspelled_key_names_itself_and_suggests(self, sink_options):
        with pytest.raises(ConfigError) as info:
            parse_config({"sink": "file", "batch_limt": 5}, sink_options)
        assert info.value.key == "batch_limt"
        assert "'batch_limt'" in str(info.value)
        assert "Did you mean 'batch_limit'?" in str(info.value)
        assert "path" in str(info.value)  # the known keys are listed

    def test_misspelled_key_in_sinks_entry(self, sink_options):
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.pth"):
            parse_config({"sinks": [{"type": "file", "pth": "x"}]}, sink_options)

    def test_unset_env_variable_names_the_variable(self, sink_options, monkeypatch):
        monkeypatch.delenv("EVENTSINK_TEST_UNSET", raising=False)
        with pytest.raises(ConfigError, match="EVENTSINK_TEST_UNSET") as info:
            parse_config({"sink": "file", "path": {"$env": "EVENTSINK_TEST_UNSET"}}, sink_options)
        assert info.value.key == "path"

    def test_env_variable_is_resolved(self, sink_options, monkeypatch):
        monkeypatch.setenv("EVENTSINK_TEST_PATH", "from-env.jsonl")
        settings = parse_config(
            {"sink": "file", "path": {"$env": "EVENTSINK_TEST_PATH"}}, sink_options
        )
        assert settings.sinks[0].options["path"] == "from-env.jsonl"

    def test_wrong_type_names_key_and_expectation(self, sink_options):
        with pytest.raises(ConfigError, match="'batch_limit' must be an integer"):
            parse_config({"sink": "file", "batch_limit": "many"}, sink_options)

    def test_strings_from_the_command_line_are_converted(self, sink_options):
        settings = parse_config({"sink": "file", "max_rate": "10", "fsync": "false"}, sink_options)
        assert settings.sinks[0].delivery.max_rate == 10
        assert settings.sinks[0].options["fsync"] is False

    def test_bad_choice(self, sink_options):
        with pytest.raises(ConfigError, match="'overflow' must be one of"):
            parse_config({"sink": "file", "overflow": "explode"}, sink_options)

    def test_unknown_sink_lists_installed_and_group(self, sink_options):
        with pytest.raises(UnknownPluginError) as info:
            parse_config({"sink": "nosuch"}, sink_options)
        message = str(info.value)
        assert "'nosuch'" in message and "file" in message and "'eventsink'" in message

    def test_duplicate_sink_names(self, sink_options):
        with pytest.raises(ConfigError, match="two sinks are named 'file'"):
            parse_config({"sinks": [{"type": "file"}, {"type": "file"}]}, sink_options)

    def test_sink_options_at_top_level_with_sinks_list(self, sink_options):
        with pytest.raises(ConfigError, match="inside its entry of 'sinks'"):
            parse_config({"path": "x", "sinks": [{"type": "file"}]}, sink_options)


class TestSecrets:
    """Secret options are wrapped so they never show in repr, str or errors."""

    def test_secret_option_is_wrapped(self, monkeypatch):
        monkeypatch.setenv("EVENTSINK_TEST_TOKEN", "dstok_very_secret")
        options = (Option("token", str, None, secret=True),)
        values = validate_options(options, {"token": {"$env": "EVENTSINK_TEST_TOKEN"}})
        token = values["token"]
        assert isinstance(token, Secret)
        assert token.reveal() == "dstok_very_secret"
        assert "dstok_very_secret" not in repr(values)
        assert "dstok_very_secret" not in str(token)

    def test_wrong_type_of_secret_does_not_echo_it(self):
        options = (Option("token", int, None, secret=True),)
        with pytest.raises(ConfigError) as info:
            validate_options(options, {"token": "dstok_very_secret"})
        assert "dstok_very_secret" not in str(info.value)


class TestByteSizes:
    """``max_bytes`` takes an integer or a size with a unit; anything else names the key."""

    @pytest.mark.parametrize(
        ("given", "expected"),
        [(1000, 1000), ("1000", 1000), ("500MB", 500_000_000), ("1.5 GiB", 1_610_612_736)],
    )
    def test_sizes(self, sink_options, given, expected):
        settings = parse_config({"sink": "stdout", "max_bytes": given}, sink_options)
        assert settings.max_bytes == expected

    @pytest.mark.parametrize("given", ["lots", "5 parsecs", True, 0, -1])
    def test_bad_sizes_name_the_key(self, sink_options, given):
        with pytest.raises(ConfigError, match="'max_bytes' must be"):
            parse_config({"sink": "stdout", "max_bytes": given}, sink_options)


class TestSecretFromFile:
    """A secret read from a file can be read again, and still never shows itself."""

    def test_reload(self, tmp_path):
        path = tmp_path / "token"
        path.write_text("first\n")
        options = (Option("token", str, None, secret=True),)
        secret = validate_options(options, {"token": {"$file": str(path)}})["token"]
        assert secret.reveal() == "first" and not secret.reload()
        path.write_text("second\n")
        assert secret.reload() and secret.reveal() == "second"
        path.unlink()
        assert not secret.reload() and secret.reveal() == "second"  # kept when unreadable
        assert "second" not in repr(secret)

    def test_a_secret_given_directly_has_nothing_to_reload(self):
        options = (Option("token", str, None, secret=True),)
        assert not validate_options(options, {"token": "value"})["token"].reload()
