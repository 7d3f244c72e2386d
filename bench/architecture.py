"""The package's shape in figures: modules, the largest one, and import floors: the longest
chain of fedtune modules importing one another, counted two ways: imports at a module's top
level (what importing it runs) and every import that runs (lazy ones in functions too; the
imports under `if TYPE_CHECKING:` never run and are left out of both).

    python bench/architecture.py [PACKAGE_DIR]    # default: this checkout's fedtune/
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path


def _runs(node: ast.AST) -> bool:
    """Not an `if TYPE_CHECKING:` block."""
    return not (isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")


def _statements(nodes: list[ast.stmt], lazy: bool) -> list[ast.AST]:
    """The statements that run: the top level, and with `lazy` every nested one too."""
    found: list[ast.AST] = []
    for node in filter(_runs, nodes):
        found.append(node)
        if lazy or isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                found += _statements(getattr(node, field, []), lazy)
    return found


def import_graph(package: Path, lazy: bool) -> dict[str, set[str]]:
    """Module -> the fedtune modules it imports when it is imported (`lazy`: also in its
    functions)."""
    root = package.parent
    modules: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, lazy):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        modules[name] = names
    return {
        name: {n for n in names if n in modules and n != name and not name.startswith(f"{n}.")}
        for name, names in modules.items()
    }


def floors(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain (a module importing nothing of fedtune's is 1)."""

    @cache
    def height(name: str, path: frozenset[str] = frozenset()) -> int:
        below = [height(n, path | {name}) for n in graph[name] if n not in path]
        return 1 + max(below, default=0)

    return max(height(name) for name in graph)


def main() -> None:
    package = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fedtune"
    sizes = {p: len(p.read_text().splitlines()) for p in package.rglob("*.py")}
    largest = max(sizes, key=sizes.get)
    print(f"modules {len(sizes)}, lines {sum(sizes.values())}")
    print(f"largest module {largest.relative_to(package.parent)}: {sizes[largest]} lines")
    eager, every = floors(import_graph(package, False)), floors(import_graph(package, True))
    print(f"import floors: {eager} at the top level, {every} with lazy imports")


if __name__ == "__main__":
    main()
