"""What every scenario section is built on: frozen sections with one-line errors, registry
names checked lazily, and plugin sections whose parameters the plugin itself declares."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from fedtune.errors import FedtuneError

MAX_SEED = 2**31 - 1
MAX_WAIT_SECONDS = 30 * 24 * 3600.0
"""Longest timeout or delay a scenario may ask for (30 days; Python's waits overflow past
about 292 years, and a round that long is a typo)."""


class ScenarioError(FedtuneError, ValueError):
    """A scenario file or override is invalid; the message is one line naming the key."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,  # a field's docstring is its description (the docs)
    )


F = TypeVar("F", bound=Callable[..., Any])


def takes(params: type[Section]) -> Callable[[F], F]:
    """Declare the parameters of a plugin that is a function (a partitioner, a PEFT method):
    its section accepts them, validated, when `kind` names it."""

    def mark(plugin: F) -> F:
        plugin.Params = params  # type: ignore[attr-defined]
        return plugin

    return mark


class PluginSection(Section):
    """A section whose `kind` names an entry of a registry (`registry`: module and attribute,
    imported when validating); the entry's `Params` (a Section declared next to the plugin;
    none: no parameters) declares the section's other keys, which it validates and which read
    as attributes (`codec.topk_fraction`). Another plugin's keys are ignored (a file written
    for one kind works with `--set kind=another`); a key no plugin takes is an error."""

    model_config = ConfigDict(extra="allow")
    registry: ClassVar[tuple[str, str]]
    kind_key: ClassVar[str] = "kind"
    no_plugin: ClassVar[tuple[str, ...]] = ()
    """Names that mean "no plugin" (no parameters) without a registry entry."""

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_params(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        kind = data.get(cls.kind_key, cls.model_fields[cls.kind_key].default)
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        params = cls.plugin_params(kind)
        other_kinds = cls.parameters_of_other_kinds(params)
        extra = {k: v for k, v in data.items() if k not in own and k not in other_kinds}
        if unknown := sorted(set(extra) - set(params.model_fields)):
            takes = ", ".join(params.model_fields) or "none"
            error = f"not a parameter of {cls.kind_key} {kind!r} (its parameters: {takes})"
            line = {"type": "value_error", "loc": (unknown[0],), "input": extra[unknown[0]]}
            raise ValidationError.from_exception_data(
                cls.__name__, [{**line, "ctx": {"error": error}}]
            )
        try:
            values = params.model_validate(extra)
        except ValidationError as err:
            raise ValidationError.from_exception_data(cls.__name__, _line_errors(err)) from None
        return handler({**own, **values.model_dump()})

    @classmethod
    def parameters_of_other_kinds(cls, params: type[Section]) -> set[str]:
        """The keys other plugins take and `params` does not: ignored, as a file written for
        one kind then works with `--set kind=another`."""
        every = {
            key
            for p in cls.plugins().values()
            for key in getattr(p, "Params", Section).model_fields
        }
        return every - set(params.model_fields)

    @classmethod
    def plugins(cls) -> dict[str, Any]:
        """Name -> plugin, the registry's entries (imported now)."""
        module, registry = cls.registry
        return getattr(importlib.import_module(module), registry)

    @classmethod
    def plugin_params(cls, kind: Any) -> type[Section]:
        """The parameters `kind` takes; a ValidationError naming `kind_key` if it names no
        plugin. The error reads as a Literal's."""
        if kind in cls.no_plugin:
            return Section
        names = [*cls.no_plugin, *cls.plugins()]
        if isinstance(kind, str) and kind in names:
            return getattr(cls.plugins()[kind], "Params", Section)
        quoted = [repr(n) for n in names]
        expected = " or ".join(filter(None, [", ".join(quoted[:-1]), quoted[-1]]))
        error = {"type": "literal_error", "loc": (cls.kind_key,), "input": kind}
        error["ctx"] = {"expected": expected}
        raise ValidationError.from_exception_data(cls.__name__, [error])


def _line_errors(err: ValidationError) -> list[Any]:
    return [
        {"type": e["type"], "loc": e["loc"], "input": e["input"], "ctx": e.get("ctx", {})}
        for e in err.errors()
    ]
