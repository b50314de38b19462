"""Generate the reference parts of the docs from the code, so they cannot drift.

``docs/configuration.md`` and ``docs/hooks.md`` are written by hand around marked blocks::

    <!-- docgen:begin pipeline-options -->
    ...generated, do not edit...
    <!-- docgen:end pipeline-options -->

Run ``python -m eventsink.docgen`` to rewrite the blocks after changing an option or a hook,
and ``python -m eventsink.docgen --check`` (what the tests do) to fail when a page is stale.
Sinks and sources are found through the plugin manager, so a built-in sink added later is
documented (and checked) without touching this module.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import hookspecs
from .config import (
    DELIVERY_OPTIONS,
    ENTRY_POINTS,
    OUTBOX_PLACES,
    PIPELINE_OPTIONS,
    ByteSize,
    Option,
)
from .plugins import make_plugin_manager, sink_classes, source_classes

DOCS = Path(__file__).resolve().parent.parent / "docs"
BEGIN = "<!-- docgen:begin {} -->"
END = "<!-- docgen:end {} -->"

#: Further option lists to document: (block name, heading, "module:attribute"). A list that
#: cannot be imported (an optional extra not installed) is left out with a note.
EXTRA_OPTION_SETS: list[tuple[str, str, str]] = [
    ("client", "Python client (`eventsink.Client`)", "eventsink.client:CLIENT_OPTIONS"),
]


def builtin(classes: dict[str, type]) -> dict[str, type]:
    """The classes shipped in the eventsink package itself, by name (third parties excluded)."""
    return {
        name: cls
        for name, cls in sorted(classes.items())
        if cls.__module__ == "eventsink" or cls.__module__.startswith("eventsink.")
    }


def builtin_sinks() -> dict[str, type]:
    """Every built-in sink class by name."""
    return builtin(sink_classes(make_plugin_manager()))


def builtin_sources() -> dict[str, type]:
    """Every built-in pull source class by name."""
    return builtin(source_classes(make_plugin_manager()))


def markdown_text(text: str) -> str:
    """A docstring's reST-isms (``code``, :class:`~a.B`) as Markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return markdown_text(text).replace("|", "\\|").replace("\n", " ")


TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    ByteSize: 'bytes: integer or `"500MB"`, `"2GiB"`',
}


def _default(option: Option) -> str:
    described = option.describe_default()
    if described in ("required", "none"):
        return described
    try:  # as it is written in a YAML or JSON config
        return f"`{json.dumps(option.default, ensure_ascii=False)}`"
    except TypeError:
        return f"`{described}`"


def _kind(option: Option) -> str:
    kind = TYPE_NAMES.get(option.kind, option.kind.__name__)
    if option.choices:
        kind += ": " + ", ".join(f"`{json.dumps(choice)}`" for choice in option.choices)
    if option.minimum is not None:
        kind += f", ≥ {option.minimum:g}"
    return kind


def options_table(options: Sequence[Option]) -> str:
    """A Markdown table of ``options``: key, type, default, meaning."""
    if not options:
        return "No options.\n"
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for option in options:
        default = _default(option)
        meaning = _cell(option.help) + (
            " **Secret**: never logged or shown." if option.secret else ""
        )
        lines.append(f"| `{option.name}` | {_cell(_kind(option))} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def options_of(cls: type) -> Sequence[Option]:
    """A plugin class's documented options (sources compute theirs from ``CONFIG``)."""
    options = getattr(cls, "options", ())
    return options() if callable(options) else options


def plugin_sections(classes: dict[str, type], kind: str) -> str:
    """One section per plugin class: its name, description and options table."""
    if not classes:
        return f"No built-in {kind}s.\n"
    parts = []
    for name, cls in classes.items():
        description = getattr(cls, "description", "") or (inspect.getdoc(cls) or "").split("\n")[0]
        parts.append(f"### `{name}`\n\n{_cell(description)}\n\n{options_table(options_of(cls))}")
    return "\n".join(parts)


def extra_sections() -> str:
    """The :data:`EXTRA_OPTION_SETS`, each as a heading and a table."""
    parts = []
    for _, heading, target in EXTRA_OPTION_SETS:
        module, _, attribute = target.partition(":")
        try:
            options = getattr(importlib.import_module(module), attribute)
        except ImportError:
            parts.append(f"### {heading}\n\nNot installed here (`{module}`).\n")
            continue
        parts.append(f"### {heading}\n\n{options_table(options)}")
    return "\n".join(parts) or "None.\n"


def entry_points_table() -> str:
    """A Markdown table of :data:`~eventsink.config.ENTRY_POINTS`: what differs, and why."""
    lines = [
        "| entry point | default sink | other defaults | outbox | unnamed sinks called | why |",
        "|---|---|---|---|---|---|",
    ]
    for entry in ENTRY_POINTS.values():
        given = entry.defaults.items()
        defaults = ", ".join(f"`{key}: {json.dumps(value)}`" for key, value in given)
        outbox = OUTBOX_PLACES[entry.outbox]
        keyed = "destination" if entry.names_sinks_after_destination else "type"
        lines.append(
            f"| `{entry.name}` | `{entry.sink}` | {defaults or 'none'} | {outbox} | {keyed} "
            f"| {_cell(entry.why)} |"
        )
    return "\n".join(lines) + "\n"


def hook_functions() -> list[Callable[..., object]]:
    """Every hook spec, in the order of ``eventsink/hookspecs.py``."""
    functions = [
        value
        for name, value in vars(hookspecs).items()
        if name.startswith("eventsink_") and inspect.isfunction(value)
    ]
    return sorted(functions, key=lambda function: function.__code__.co_firstlineno)


def hooks_reference() -> str:
    """A section per hook: heading, signature and docstring."""
    parts = []
    for function in hook_functions():
        signature = str(inspect.signature(function)).replace("'", "")
        doc = markdown_text(inspect.getdoc(function) or "")
        doc = textwrap.indent(doc, "").replace("::\n", ":\n")
        parts.append(
            f"### {function.__name__}\n\n"
            f"```python\ndef {function.__name__}{signature}\n```\n\n{doc}\n"
        )
    return "\n".join(parts)


def blocks() -> dict[str, dict[str, Callable[[], str]]]:
    """Page file name -> block name -> generator."""
    return {
        "configuration.md": {
            "pipeline-options": lambda: options_table(PIPELINE_OPTIONS),
            "delivery-options": lambda: options_table(DELIVERY_OPTIONS),
            "entry-points": entry_points_table,
            "sink-options": lambda: plugin_sections(builtin_sinks(), "sink"),
            "source-options": lambda: plugin_sections(builtin_sources(), "source"),
            "extra-options": extra_sections,
        },
        "hooks.md": {"hooks": hooks_reference},
    }


def fill(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` replaced by ``content``."""
    begin, end = BEGIN.format(name), END.format(name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the page has no {begin} ... {end} block")
    return text[: start + len(begin)] + "\n\n" + content.rstrip("\n") + "\n\n" + text[stop:]


def render(page: str, text: str) -> str:
    """``text`` of ``page`` with all its generated blocks brought up to date."""
    for name, generate in blocks()[page].items():
        text = fill(text, name, generate())
    return text


def stale_pages(docs: Path = DOCS) -> list[str]:
    """The pages whose generated blocks differ from what the code says now."""
    return [
        page
        for page in blocks()
        if render(page, (docs / page).read_text()) != (docs / page).read_text()
    ]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventsink.docgen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="fail if a page is out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs directory")
    args = parser.parse_args(list(argv) if argv is not None else None)
    stale = stale_pages(args.docs)
    if args.check:
        for page in stale:
            sys.stderr.write(f"{args.docs / page} is out of date: run python -m eventsink.docgen\n")
        return 1 if stale else 0
    for page in stale:
        path = args.docs / page
        path.write_text(render(page, path.read_text()))
        sys.stderr.write(f"updated {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
