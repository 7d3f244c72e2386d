"""YAML loading with bounds: a few KB of nested aliases cannot stand for billions of values."""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_NODES = 10_000
"""The most values a scenario (or an override) may hold once its aliases are expanded."""


class YamlTooLarge(yaml.YAMLError):
    """A YAML document that expands past MAX_YAML_NODES nodes, or refers to itself."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node, limit: int = MAX_YAML_NODES) -> None:
    """Raise YamlTooLarge if `root` has more than `limit` nodes once every alias is expanded
    (a few KB of nested aliases can stand for billions), or an alias inside its own anchor.
    Counts each distinct node once, so this takes linear time whatever the expansion."""
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in _children(node))
            if expanded[key] > limit:
                raise YamlTooLarge(
                    f"expands to more than {limit} values (aliases of aliases?); refusing it"
                )
        elif key in on_path:
            raise YamlTooLarge("an alias refers to the node that contains it")
        elif key not in expanded:
            on_path.add(key)
            stack.append((node, True))
            stack += [(child, False) for child in _children(node) if id(child) not in expanded]


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents that expand past MAX_YAML_NODES nodes before
    anything is built from them."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


def safe_load(text: str) -> Any:
    """`yaml.safe_load` with bounded alias expansion; YAMLError (YamlTooLarge included) for
    anything it refuses, nesting too deep for the parser included."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
