"""`federation.strategy_params`: checked against the registered strategy's constructor."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedtune.errors import short
from fedtune.federation.strategies import STRATEGIES

STRATEGY_OWN_PARAMS = {
    "fraction_train": "federation.fraction_train",
    "fraction_evaluate": "federation.fraction_evaluate",
    "min_train_nodes": "federation.min_train_nodes",
    "min_evaluate_nodes": "federation.min_evaluate_nodes",
    "min_available_nodes": "federation.min_available_nodes",
    "weighted_by_key": None,
    "arrayrecord_key": None,
    "configrecord_key": None,
    "train_metrics_aggr_fn": None,
    "evaluate_metrics_aggr_fn": None,
    "train_loss_key": None,
}
"""Strategy constructor parameters fedtune sets itself (with the scenario key that sets
them, where there is one): never settable in `federation.strategy_params`."""


def check_strategy_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked against the constructor of strategy `name` (names, and values by its
    annotations in pydantic's lax mode); returns them converted (e.g. 1 -> 1.0 for a float).
    Raise ValueError naming the first bad key, or the strategy's own refusal of the values
    (e.g. FedTrimmedAvg's beta outside [0, 0.5)), so that no run starts with them."""
    init = STRATEGIES[name].__init__
    signature = inspect.signature(init)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    settable = [
        p
        for p, param in signature.parameters.items()
        if p != "self"
        and p not in STRATEGY_OWN_PARAMS
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        and not _is_callable(hints.get(p))
    ]
    checked = {}
    for key, value in params.items():
        if key in STRATEGY_OWN_PARAMS:
            where = STRATEGY_OWN_PARAMS[key]
            hint = f"; set {where} instead" if where else ""
            raise ValueError(f"{key}: set by fedtune itself, not a strategy parameter{hint}")
        if key not in settable:
            known = ", ".join(settable) or "none"
            raise ValueError(f"{key}: not a parameter of {name} (its parameters: {known})")
        annotation = hints.get(key, Any)
        try:
            checked[key] = TypeAdapter(annotation).validate_python(value)
        except ValidationError as err:
            msg = err.errors()[0]["msg"]
            kind = getattr(annotation, "__name__", str(annotation))
            raise ValueError(
                f"{key}: {msg} (got {short(value)}; {name}'s {key} is a {kind})"
            ) from None
    required = [p for p, param in signature.parameters.items() if param.default is param.empty]
    if all(p in checked for p in required if p != "self"):  # else fedtune supplies them
        try:
            STRATEGIES[name](**checked)
        except ValueError as exc:
            raise ValueError(f"{name} refuses them: {exc}") from None
    return checked


def _is_callable(annotation: Any) -> bool:
    """Whether an annotation is (or includes) a Callable: not expressible in a scenario."""
    if annotation is None:
        return False
    origin = typing.get_origin(annotation)
    if origin is Callable:
        return True
    return any(_is_callable(arg) for arg in typing.get_args(annotation) if arg is not type(None))
