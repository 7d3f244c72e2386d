"""MkDocs hook: the pages that must not drift from the code are generated when the site is
built. A page holds a marker and gets, in its place:

- `{{ scenario_reference }}`: every scenario section and key, from the pydantic models
  (type, default, the field's docstring), and each plugin's own parameters, from its registry;
- `{{ cli_reference }}`: every command's `--help`, from the argparse parser;
- `{{ bench:NAME }}`: `bench/NAME.md` as the benchmark wrote it, stamped with the commit that
  last wrote it and the machine it ran on;
- `{{ slow_tests }}`: every test in the slow tier (marked `slow` or `deploy`) with the reason
  its mark gives, read from tests/.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"\{\{\s*(\w+)(?::([\w.-]+))?\s*\}\}")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](m.group(2)), markdown)


# ------------------------------------------------------------------ scenario reference


def _type(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    if origin in (tuple, list):
        return f"list of {_type(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping {_type(key)} -> {_type(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {type(None): "null", str: "string", bool: "boolean"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "(section)"
    if field.default is PydanticUndefined:
        return "**required**"
    if isinstance(field.default, BaseModel):
        return "(section)"
    return f"`{json.dumps(field.default)}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| key | type | default | what it sets |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{prefix}{name}` | {_cell(_type(field.annotation))} | {_default(field)} "
            f"| {_cell(field.description)} |"
        )
    return rows


def _plugins(model: Any, prefix: str) -> list[str]:
    """A plugin section's other keys: each registered plugin's own parameters."""
    lines = []
    for kind in (*model.no_plugin, *model.plugins()):
        params = model.plugin_params(kind)
        lines += ["", f"**`{prefix}{model.kind_key}: {kind}`**"]
        if params.model_fields:
            lines += ["", *_table(params, prefix)]
        else:
            lines += ["", "No parameters of its own."]
    return lines


def _sections(model: type[BaseModel], path: str) -> list[str]:
    from fedtune.config import PluginSection

    prefix = f"{path}." if path else ""
    doc = _cell(model.__doc__) if model.__doc__ and "BaseModel" not in model.__doc__ else ""
    lines = [f"## `{path or 'top level'}`", "", doc, "", *_table(model, prefix)]
    if issubclass(model, PluginSection):
        lines += _plugins(model, prefix)
    for name, field in model.model_fields.items():
        inner = [a for a in (field.annotation, *typing.get_args(field.annotation))]
        for candidate in inner:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                lines += ["", *_sections(candidate, f"{prefix}{name}")]
    return lines


def scenario_reference(_: str | None) -> str:
    from fedtune.config import Scenario

    return "\n".join(_sections(Scenario, ""))


# ------------------------------------------------------------------ CLI reference


def cli_reference(_: str | None) -> str:
    from fedtune.cli.parser import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in commands.choices.items():
        lines += ["", f"## `fedtune {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(lines)


# ------------------------------------------------------------------ benchmark results


def _machine(name: str, text: str) -> str:
    found = re.search(r"Machine: ([^;\n]+)", text)
    if found:
        return found.group(1).strip()
    data = ROOT / "bench" / f"{name}.json"
    if data.is_file():
        machine = json.loads(data.read_text()).get("machine")
        if machine:
            return ", ".join(f"{k} {v}" for k, v in machine.items())
    return "not recorded by this benchmark"


def bench(name: str | None) -> str:
    path = ROOT / "bench" / f"{name}.md"
    text = path.read_text(encoding="utf-8")
    stamp = subprocess.run(
        ["git", "log", "-1", "--format=%h (%cs)", "--", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text  # the page has a title
    return (
        f'!!! info "Measured"\n    Written by `bench/{name}.py` into `bench/{name}.md`, '
        f"committed in {stamp or 'this checkout (not committed yet)'}; machine: "
        f"{_machine(name, text)}.\n\n{body}"
    )


# ------------------------------------------------------------------ the slow tier

TIERS = ("slow", "deploy")


def _tier(decorators: list[ast.expr]) -> tuple[str, str] | None:
    """(`slow` or `deploy`, the reason given to the mark) of a test's or module's marks."""
    for mark in decorators:
        call = mark if isinstance(mark, ast.Call) else None
        attr = call.func if call else mark
        if isinstance(attr, ast.Attribute) and attr.attr in TIERS:
            return attr.attr, call.args[0].value if call and call.args else ""
    return None


def slow_tests(_: str | None) -> str:
    rows = ["| test | tier | why it is slow |", "| --- | --- | --- |"]
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = next(
            (
                _tier([node.value])
                for node in tree.body
                if isinstance(node, ast.Assign)
                and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            ),
            None,
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                tier = _tier(node.decorator_list) or module
                if tier:
                    rows.append(f"| `{path.name}::{node.name}` | {tier[0]} | {_cell(tier[1])} |")
    return "\n".join(rows)


GENERATORS = {
    "slow_tests": slow_tests,
    "scenario_reference": scenario_reference,
    "cli_reference": cli_reference,
    "bench": bench,
}
