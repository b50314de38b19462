"""The documentation tells the truth about the code: hooks, config keys, the public API."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import eventsink
from eventsink import docgen
from eventsink.config import DELIVERY_OPTIONS, PIPELINE_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def documented_keys(page: str) -> set[str]:
    """Keys in the first column of the page's tables."""
    return set(re.findall(r"^\| `([^`]+)` \|", (DOCS / page).read_text(), re.MULTILINE))


class TestHooksPage:
    """Every hook in eventsink/hookspecs.py is documented on docs/hooks.md."""

    @pytest.mark.parametrize("hook", [f.__name__ for f in docgen.hook_functions()])
    def test_hook_has_a_heading_and_its_docstring(self, hook: str) -> None:
        """The hook is a heading, followed by the first line of its docstring."""
        text = (DOCS / "hooks.md").read_text()
        assert f"\n### {hook}\n" in text, f"docs/hooks.md has no heading for {hook}"
        summary = docgen.markdown_text(
            getattr(eventsink.hookspecs, hook).__doc__.strip().splitlines()[0]
        )
        assert summary in text

    def test_every_hook_is_found(self) -> None:
        """The generator sees the hooks pluggy sees."""
        from eventsink.plugins import make_plugin_manager

        pm = make_plugin_manager(entry_points=False)
        specs = {name for name in dir(pm.hook) if name.startswith("eventsink_")}
        assert {f.__name__ for f in docgen.hook_functions()} == specs


class TestConfigurationPage:
    """Every key the code accepts appears on docs/configuration.md."""

    def test_pipeline_and_delivery_keys(self) -> None:
        """PIPELINE_OPTIONS and DELIVERY_OPTIONS are all documented."""
        missing = {o.name for o in (*PIPELINE_OPTIONS, *DELIVERY_OPTIONS)} - documented_keys(
            "configuration.md"
        )
        assert not missing, f"add to docs/configuration.md: {sorted(missing)}"

    @pytest.mark.parametrize("sink", sorted(docgen.builtin_sinks()))
    def test_every_builtin_sink_and_its_options(self, sink: str) -> None:
        """Each built-in sink has a section listing each of its options."""
        text = (DOCS / "configuration.md").read_text()
        assert f"### `{sink}`" in text, f"run python -m eventsink.docgen ({sink} is missing)"
        section = text.split(f"### `{sink}`", 1)[1].split("\n### ", 1)[0]
        for option in docgen.builtin_sinks()[sink].options:
            assert f"| `{option.name}` |" in section, f"{sink}.{option.name} is not documented"

    @pytest.mark.parametrize("source", sorted(docgen.builtin_sources()))
    def test_every_builtin_source_and_its_options(self, source: str) -> None:
        """Each built-in pull source has a section listing each of its options."""
        text = (DOCS / "configuration.md").read_text()
        assert f"### `{source}`" in text
        for option in docgen.options_of(docgen.builtin_sources()[source]):
            assert f"| `{option.name}` |" in text

    def test_third_party_sinks_are_left_out(self) -> None:
        """Only sinks shipped in the eventsink package are documented as built-in."""
        assert all(
            cls.__module__.startswith("eventsink.") for cls in docgen.builtin_sinks().values()
        )
        assert {"file", "stdout", "null"} <= set(docgen.builtin_sinks())


class TestGeneratedBlocks:
    """The generated parts of the pages match the code (python -m eventsink.docgen)."""

    def test_pages_are_up_to_date(self) -> None:
        """Regenerating changes nothing."""
        assert docgen.stale_pages(DOCS) == [], "run: python -m eventsink.docgen"

    def test_check_mode_reports_a_stale_page(self, tmp_path: Path) -> None:
        """--check fails, naming the page, when a generated block was edited by hand."""
        for page in docgen.blocks():
            (tmp_path / page).write_text((DOCS / page).read_text())
        page = tmp_path / "configuration.md"
        page.write_text(page.read_text().replace("| `batch_limit` |", "| `batch_size` |"))
        assert docgen.main(["--check", "--docs", str(tmp_path)]) == 1
        assert docgen.main(["--docs", str(tmp_path)]) == 0
        assert docgen.main(["--check", "--docs", str(tmp_path)]) == 0
        assert page.read_text() == (DOCS / "configuration.md").read_text()

    def test_secret_options_are_marked(self) -> None:
        """A secret option's row says it is secret."""
        from eventsink.config import Option

        table = docgen.options_table((Option("api_token", str, None, "The token.", secret=True),))
        assert "| `api_token` |" in table and "**Secret**" in table


class TestNav:
    """Every page in docs/ is in the mkdocs nav, and every nav entry exists."""

    def test_nav_matches_pages(self) -> None:
        """The nav of mkdocs.yml lists exactly the Markdown files of docs/."""
        text = (ROOT / "mkdocs.yml").read_text()
        nav = set(re.findall(r"^ +- [^:]+: (\S+\.md)$", text, re.M))  # in sections too
        assert nav == {path.name for path in DOCS.glob("*.md")}


class TestPublicApi:
    """eventsink's public names are sorted, importable, and typed."""

    def test_all_is_sorted(self) -> None:
        """__all__ is sorted (as ruff and readers expect)."""
        assert eventsink.__all__ == sorted(eventsink.__all__)

    @pytest.mark.parametrize("name", eventsink.__all__)
    def test_every_name_is_importable(self, name: str) -> None:
        """Each name in __all__ exists and documents itself."""
        value = getattr(importlib.import_module("eventsink"), name)
        assert value.__doc__, f"eventsink.{name} has no docstring"

    def test_the_construction_path_is_public(self) -> None:
        """eventsink.build (the one way to build a pipeline) is exported beside Client."""
        from eventsink.builder import build

        assert {"Client", "Pipeline", "build"} <= set(eventsink.__all__)
        assert eventsink.build is build

    def test_testing_all_is_sorted_and_importable(self) -> None:
        """eventsink.testing's __all__ is sorted and every name resolves."""
        import eventsink.testing as testing

        assert testing.__all__ == sorted(testing.__all__)
        for name in testing.__all__:
            assert getattr(testing, name) is not None

    def test_py_typed_is_shipped(self) -> None:
        """py.typed marks the package as typed, and is package data."""
        assert (Path(eventsink.__file__).parent / "py.typed").is_file()
        assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()


def _without_env(value):
    """Datasette's ``{$env: NAME}`` references replaced by a placeholder string."""
    if isinstance(value, dict):
        if set(value) == {"$env"}:
            return "from-the-environment"
        return {key: _without_env(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_env(item) for item in value]
    return value


def plugin_config_examples() -> list[str]:
    text = (DOCS / "datasette.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return [block for block in blocks if block.startswith("plugins:\n  eventsink:")]


class TestDatasetteExamples:
    """Every plugin config shown in docs/datasette.md is one the plugin accepts."""

    @pytest.mark.parametrize("block", plugin_config_examples())
    def test_example_is_a_valid_plugin_config(self, block: str) -> None:
        import yaml

        from eventsink.datasette.plugin import parse_plugin_config
        from eventsink.datasette.routing import parse_router

        config = _without_env(yaml.safe_load(block)["plugins"]["eventsink"])
        settings = parse_plugin_config(config)
        extra = settings.extra
        parse_router(
            table=extra["table"],
            events=extra["events"],
            exclude_events=extra["exclude_events"],
            databases=extra["databases"],
            sink_names=[sink.name for sink in settings.sinks],
        )

    def test_examples_are_found(self) -> None:
        assert len(plugin_config_examples()) >= 4
