"""Reading a scenario: a file or a shipped name, `--set` overrides, a Flower run config;
every problem is one ScenarioError line naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedtune.bounded_yaml import YamlTooLarge, safe_load
from fedtune.config.base import ScenarioError
from fedtune.config.scenario import Scenario
from fedtune.errors import cut, first_line, short


def _shipped_scenario_dir() -> Path:
    """The shipped scenarios: inside the package when installed from a wheel, else the
    source tree's (or the Flower App bundle's) top-level `scenarios/`."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "scenarios"
    return packaged if packaged.is_dir() else package.parent / "scenarios"


SCENARIO_DIR = _shipped_scenario_dir()
MAX_SCENARIO_BYTES = 256 * 1024
"""Largest scenario file read (shipped ones are about 1.5 KB)."""


def _quoted(text: str, limit: int) -> str:
    """A key or path as an error line shows it: cut to `limit` characters, escaped and quoted
    where it is empty or holds a line break (or another unprintable character)."""
    return cut(text if text.isprintable() and text else repr(text), limit)


def _one_line(err: ValidationError, origin: str) -> str:
    """The first validation error as `origin: dotted.key: what (got input)`, on one line and
    short: the key's parts (quoted where they would break the line) and the input are cut to
    40 and 80 characters."""
    first = err.errors()[0]
    key = ".".join(_quoted(str(p), 40) for p in first["loc"])
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg += f" (got {short(first['input'])})"
    where = f"{origin}: {key}: " if key else f"{origin}: "
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}{msg}{more}"


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> (`a.b`, YAML-parsed value; the raw text where it is not YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"--set {short(item)}: expected dotted.key=value")
    try:
        value = safe_load(raw) if raw.strip() else None
    except YamlTooLarge as exc:
        raise ScenarioError(f"--set {_quoted(key.strip(), 40)}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (creating sections as needed)."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(f"--set {_quoted(dotted, 80)}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return raw


def resolve_scenario_path(ref: str | Path) -> Path:
    """A path as given, else a shipped scenario by file name or bare name."""
    path = Path(ref)
    for candidate in (path, SCENARIO_DIR / path, SCENARIO_DIR / f"{ref}.yaml"):
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):  # a name too long for the OS, a NUL byte, ...
            continue
    if path.is_dir():
        raise ScenarioError(f"{_quoted(str(ref), 200)}: a directory, not a scenario file")
    raise ScenarioError(f"{_quoted(str(ref), 200)}: scenario file not found")


def load_scenario(ref: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, override and validate a scenario file; raise ScenarioError on any problem."""
    path = resolve_scenario_path(ref)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            f"{path}: larger than {MAX_SCENARIO_BYTES // 1024} KiB; not a scenario file"
        )
    try:
        raw = safe_load(data.decode("utf-8"))
    except YamlTooLarge as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: malformed YAML: {first_line(exc)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping of sections at the top level")
    raw.setdefault("name", path.stem)
    return scenario_from_dict(apply_overrides(raw, overrides or {}), str(path))


def scenario_from_dict(raw: dict[str, Any], origin: str = "scenario") -> Scenario:
    """Validate a nested dict into a Scenario."""
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_one_line(err, origin)) from None


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """A Flower run config: `scenario` (file or shipped name) and `set`, space-separated
    `dotted.key=value` overrides (as `fedtune run --set`)."""
    overrides = dict(parse_override(item) for item in str(run_config.get("set", "")).split())
    return load_scenario(str(run_config.get("scenario", "quickstart")), overrides)
