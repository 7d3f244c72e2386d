"""Checkpoints: after every round, the global weights and everything needed to continue
exactly (round, strategy state, recorded history, RNG states), written atomically.

Data only, never code: arrays go to safetensors files, everything else to JSON, and the
strategy's state is read from and written back into a freshly built strategy, only into the
fields its classes declare (`STATE_FIELDS`). Nothing here (or anywhere in fedtune) unpickles.

Nothing read back is trusted: `load_checkpoint` reads state.json within bounds (size,
nesting) and checks every value's type and range, reads the arrays' names, shapes and dtypes
from the safetensors headers (whose declared sizes must cover the files exactly) and, given
the scenario, checks them against its model and strategy before any array is read. Anything
else is one CheckpointError naming the file and the field.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.serverapp.strategy.fedopt import FedOpt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from fedtune.atomic import save_dir_atomic
from fedtune.errors import FedtuneError, cut, first_line, short
from fedtune.federation.strategies.factory import build_strategy
from fedtune.federation.strategies.fedavgm import FedAvgM
from fedtune.federation.strategies.privacy import _Accounted
from fedtune.federation.strategies.scaffold import Scaffold
from fedtune.records import to_record

CHECKPOINT_DIR = "checkpoint"
FILES = ("weights.safetensors", "state.safetensors", "state.json")
FINGERPRINT = ("seed", "model", "data", "partition", "codec", "privacy")
"""Scenario sections a resumed run must share with its checkpoint (and the strategy)."""
META_KEYS = ("round", "recorder", "strategy", "rng", "fingerprint", "weights")
RECORD_KEYS = ("history", "lines", "totals", "extra")
RECORD_TOTALS = (
    "bytes_up_total",
    "bytes_down_total",
    "failed_replies_total",
    "rejected_updates",
    "rounds_aggregated",
)
"""A federated `RunRecorder`'s totals."""
MAX_JSON_BYTES = 256 << 20
"""state.json's largest size (a run's whole record is a few MB)."""
MAX_DEPTH = 32
"""The deepest nesting of lists and objects in state.json (fedtune writes fewer than 10)."""
MAX_ROUND = 1_000_000
"""The highest round a checkpoint may hold (each round evaluates the model: far beyond any run)."""
MAX_COUNT = 2**62
"""The highest total (bytes, replies) a record may hold."""
WEIGHT_DTYPES = ("float32", "float64")
"""The model's float32, or float64 where Flower's FedOpt strategies aggregate in float64."""
RNG_ARRAYS = {
    "rng/python": ((625,), ("uint64",)),
    "rng/numpy": ((624,), ("uint32",)),
    "rng/torch": (tuple(torch.get_rng_state().shape), ("uint8",)),
}
DTYPE_NAMES = {
    **{f"F{bits}": f"float{bits}" for bits in (16, 32, 64)},
    **{f"I{bits}": f"int{bits}" for bits in (8, 16, 32, 64)},
    **{f"U{bits}": f"uint{bits}" for bits in (8, 16, 32, 64)},
}
"""safetensors dtype codes -> numpy names (others, like BF16, keep their code)."""

Kind = Literal["arrays", "record", "accountant", "positive"]
KINDS: tuple[Kind, ...] = ("arrays", "record", "accountant", "positive")
ARRAY_KINDS = ("arrays", "record")
STATE_FIELDS: dict[type, dict[str, Kind]] = {
    FedOpt: {"m_t": "arrays", "v_t": "arrays"},
    FedAvgM: {"momentum": "arrays", "current_arrays": "record"},
    Scaffold: {"control": "arrays"},
    DifferentialPrivacyAdaptiveBase: {"clipping_norm": "positive"},
    DifferentialPrivacyFixedClippingBase: {"accountant": "accountant"},
    _Accounted: {"privacy_accountant": "accountant"},
}
"""What each strategy class carries from round to round, by field: named arrays keyed like
the weights (a dict or an ArrayRecord), an accountant (its `state_dict`) or a positive
number. Everything else is configuration, rebuilt from the scenario; a class not listed
carries nothing."""

Shapes = dict[str, tuple[tuple[int, ...], str]]
"""Array name -> (shape, dtype name)."""
Expected = dict[str, tuple[tuple[int, ...] | None, tuple[str, ...]]]
"""Array name -> (shape or None for any, accepted dtype names)."""


class CheckpointError(FedtuneError, ValueError):
    """No usable checkpoint where one was expected; always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(cut(" ".join(message.splitlines()), 600))


class _Invalid(CheckpointError):
    """A field that fails its check; `_refusing` names the file."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{cut(field, 160)}: {problem}" if field else problem)


@contextmanager
def _refusing(path: Path) -> Iterator[None]:
    """Name `path` in the CheckpointError of a failed field check."""
    try:
        yield
    except _Invalid as exc:
        raise CheckpointError(f"{path}: damaged checkpoint: {exc}") from None


def fingerprint(scenario: Any) -> dict:
    """What defines the federation: a checkpoint continues only the same one."""
    fed = scenario.federation
    return {
        **scenario.model_dump(mode="json", include=set(FINGERPRINT)),
        "strategy": {"name": fed.strategy, "params": fed.strategy_params},
    }


def _differences(saved: Any, current: Any, where: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [d for k in keys for d in _differences(saved.get(k), current.get(k), f"{where}.{k}")]
    return [] if saved == current else [f"{where.lstrip('.')} {short(saved)} -> {short(current)}"]


# ------------------------------------------------------------------ value checks


JSON_TYPES = {dict: "an object", list: "a list", str: "a string"}


def _typed(value: Any, kind: type, field: str) -> Any:
    if not isinstance(value, kind):
        raise _Invalid(field, f"must be {JSON_TYPES[kind]}, not {short(value)}")
    return value


def _whole(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(field, f"must be a whole number from {low} to {high}, not {short(value)}")
    return value


def _finite(value: Any, field: str, low: float = -math.inf) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low:
        least = "" if low == -math.inf else f" >= {low:g}"
        raise _Invalid(field, f"must be a finite number{least}, not {short(value)}")
    return float(value)


def _keys(
    value: Any, field: str, required: Collection[str], optional: Collection[str] = ()
) -> dict:
    """`value`, a JSON object with the `required` keys and no others than `optional`."""
    _typed(value, dict, field)
    extra = sorted(set(value) - set(required) - set(optional), key=str)
    if extra:
        raise _Invalid(_child(field, short(extra[0])), "is not a checkpoint field")
    missing = [key for key in required if key not in value]
    if missing:
        raise _Invalid(_child(field, missing[0]), "is missing")
    return value


def _child(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _names(value: Any, field: str) -> list[str]:
    """A list of distinct strings."""
    _typed(value, list, field)
    for name in value:
        _typed(name, str, f"{field} entry")
    if len(set(value)) != len(value):
        raise _Invalid(field, "names an array twice")
    return value


def _numbers(value: Any, field: str) -> None:
    """Numbers (NaN is a metric too) or None, possibly in (nested) objects."""
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers(item, f"{field}.{short(key)}")
    elif value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _Invalid(field, f"must be a number, not {short(value)}")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in _children(item))
    return deepest


def _children(item: dict | list) -> Iterator[Any]:
    return iter(item.values() if isinstance(item, dict) else item)


def _parse_json(text: str | bytes, field: str) -> Any:
    """JSON nested at most MAX_DEPTH deep."""
    too_deep = _Invalid(field, f"nested more than {MAX_DEPTH} deep")
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise _Invalid(field, f"not JSON ({first_line(exc)})") from None
    if _depth(value) > MAX_DEPTH:
        raise too_deep
    return value


# ------------------------------------------------------------------ strategy state


def state_fields(owner: Strategy) -> dict[str, Kind]:
    """The fields `owner`'s classes declare in STATE_FIELDS."""
    return {
        name: kind
        for cls in type(owner).__mro__
        for name, kind in STATE_FIELDS.get(cls, {}).items()
    }


def _fields(strategy: Strategy) -> dict[str, tuple[Strategy, str, Kind]]:
    """Every declared field of `strategy` and the strategies it wraps, by checkpoint path."""
    return {
        f"{path}.{name}": (owner, name, kind)
        for path, owner in _owners(strategy, "")
        for name, kind in state_fields(owner).items()
    }


def _owners(strategy: Strategy, path: str) -> list[tuple[str, Strategy]]:
    found = [(path, strategy)]
    for name, value in vars(strategy).items():
        if isinstance(value, Strategy):
            found += _owners(value, f"{path}.{name}")
    return found


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict]:
    """The declared state of `strategy` and the strategies it wraps, as arrays + JSON
    (fields still None or empty are left out: a fresh strategy has them so)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for path, (owner, name, kind) in _fields(strategy).items():
        value = getattr(owner, name)
        if value is None or kind in ARRAY_KINDS and not value:
            continue
        if kind == "accountant":
            meta[path] = {kind: value.state_dict()}
        elif kind == "positive":
            meta[path] = {kind: float(value)}
        else:
            for key, array in value.items():
                arrays[f"{path}/{key}"] = array.numpy() if kind == "record" else array
            meta[path] = {kind: list(value)}
    return arrays, meta


def check_strategy_state(strategy: Strategy, meta: dict) -> dict[str, tuple[Strategy, str, Kind]]:
    """Refuse state that does not fit `strategy`'s declared fields: an undeclared field, a
    wrong kind, a missing accountant or number, an accountant state that Flower refuses
    (loading it into `strategy`'s accountant is the check). The declared fields."""
    fields = _fields(strategy)
    for path, entry in meta.items():
        field = f"strategy entry {short(path)}"
        if path not in fields:
            declared = ", ".join(fields) or "none"
            raise _Invalid(field, f"is not a state field of this strategy (declared: {declared})")
        owner, name, kind = fields[path]
        if kind not in entry:
            raise _Invalid(field, f"must hold {kind}")
        if kind == "accountant":
            _load_accountant(getattr(owner, name), entry[kind], field)
    for path, (owner, name, kind) in fields.items():
        if kind not in ARRAY_KINDS and getattr(owner, name) is not None and path not in meta:
            raise _Invalid(f"strategy entry {path!r}", "is missing")
    return fields


def _load_accountant(accountant: Any, state: dict, field: str) -> None:
    if accountant is None:
        raise _Invalid(field, "this strategy keeps no accountant there")
    try:
        accountant.load_state_dict(state)
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        raise _Invalid(field, f"not an accountant state ({first_line(exc)})") from None


def restore_strategy(strategy: Strategy, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a `strategy_state` back into a strategy built from the same scenario, only into
    its declared fields (`check_strategy_state`, which also loads the accountants)."""
    fields = check_strategy_state(strategy, meta)
    for path, entry in meta.items():
        owner, name, kind = fields[path]
        if kind == "positive":
            setattr(owner, name, entry[kind])
        elif kind in ARRAY_KINDS:
            named = {key: arrays[f"{path}/{key}"] for key in entry[kind]}
            setattr(owner, name, to_record(named) if kind == "record" else named)


def _check_strategy_entries(entries: Any) -> None:
    """Each entry one of KINDS with a value of its type (which fields: `check_strategy_state`)."""
    for path, entry in _typed(entries, dict, "strategy").items():
        field = f"strategy entry {short(path)}"
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            raise _Invalid(field, f"must be an object with one key of {', '.join(KINDS)}")
        kind, value = next(iter(entry.items()))
        if kind in ARRAY_KINDS:
            _names(value, field)
        elif kind == "accountant":
            _typed(value, dict, field)
        elif _finite(value, field) <= 0:
            raise _Invalid(field, f"must be positive, not {short(value)}")


# ------------------------------------------------------------------ RNG states


def rng_state() -> tuple[dict[str, np.ndarray], dict]:
    """Python's, numpy's and torch's global RNG states as arrays + JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    arrays = {
        "rng/python": np.asarray(internal, dtype=np.uint64),
        "rng/numpy": np.asarray(keys, dtype=np.uint32),
        "rng/torch": torch.get_rng_state().numpy(),
    }
    meta = {"python": [version, gauss], "numpy": [kind, pos, has_gauss, cached]}
    return arrays, meta


def _rng_args(arrays: dict[str, np.ndarray], meta: dict) -> tuple[tuple, tuple, torch.Tensor]:
    """The arguments of `random.setstate`, `np.random.set_state`, `torch.set_rng_state`."""
    version, gauss = meta["python"]
    kind, pos, has_gauss, cached = meta["numpy"]
    return (
        (version, tuple(int(x) for x in arrays["rng/python"]), gauss),
        (kind, arrays["rng/numpy"], pos, has_gauss, cached),
        torch.from_numpy(arrays["rng/torch"].copy()),
    )


def restore_rng(arrays: dict[str, np.ndarray], meta: dict) -> None:
    python, numpy, torch_state = _rng_args(arrays, meta)
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_state)


def _check_rng_meta(rng: Any) -> None:
    python = _typed(_keys(rng, "rng", ("python", "numpy"))["python"], list, "rng.python")
    numpy = _typed(rng["numpy"], list, "rng.numpy")
    if len(python) != 2 or len(numpy) != 4:
        raise _Invalid("rng", "must hold [version, gauss] and [kind, pos, has_gauss, cached]")
    _whole(python[0], "rng.python version", 3, 3)
    if python[1] is not None:
        _finite(python[1], "rng.python gauss")
    if numpy[0] != "MT19937":
        raise _Invalid("rng.numpy kind", f"must be 'MT19937', not {short(numpy[0])}")
    _whole(numpy[1], "rng.numpy pos", 0, 624)
    _whole(numpy[2], "rng.numpy has_gauss", 0, 1)
    _finite(numpy[3], "rng.numpy cached")


def _check_rng(arrays: dict[str, np.ndarray], meta: dict) -> None:
    """The saved RNG states, set into throwaway generators (which check them)."""
    if arrays["rng/python"][:624].max() >= 2**32:
        raise _Invalid("rng/python", "holds a value beyond 32 bits")
    python, numpy, torch_state = _rng_args(arrays, meta)
    try:
        random.Random().setstate(python)
        np.random.RandomState().set_state(numpy)
        torch.Generator().set_state(torch_state)
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise _Invalid("rng", f"not a generator state ({first_line(exc)})") from None


# ------------------------------------------------------------------ the run's record


def _check_record(record: Any, server_round: int) -> None:
    """What `RunRecorder.restore` continues: one history entry and one line per round."""
    _keys(record, "recorder", RECORD_KEYS)
    for key in ("history", "lines"):
        if len(_typed(record[key], list, f"recorder.{key}")) != server_round + 1:
            raise _Invalid(f"recorder.{key}", f"must have {server_round + 1} entries (round 0 on)")
    for i, (entry, line) in enumerate(zip(record["history"], record["lines"], strict=True)):
        field = f"recorder.history[{i}]"
        _finite(_of_round(entry, field, i).get("seconds"), f"{field}.seconds", 0.0)
        _numbers(entry, field)
        field = f"recorder.lines[{i}]"
        if "\n" in _typed(line, str, field) or "\r" in line:  # metrics.jsonl: one per line
            raise _Invalid(field, "holds a line break")
        _of_round(_parse_json(line, field), field, i)
    for key, value in _keys(record["totals"], "recorder.totals", RECORD_TOTALS).items():
        _whole(value, f"recorder.totals.{key}", 0, MAX_COUNT)
    for key, value in _keys(record["extra"], "recorder.extra", (), ("fairness", "privacy")).items():
        _numbers(_typed(value, dict, f"recorder.extra.{key}"), f"recorder.extra.{key}")


def _of_round(value: Any, field: str, server_round: int) -> dict:
    """`value`, an object whose `round` is `server_round`."""
    _typed(value, dict, field)
    _whole(value.get("round"), f"{field}.round", server_round, server_round)
    return value


# ------------------------------------------------------------------ files


@dataclass
class Checkpoint:
    server_round: int
    """The last complete round (0: only the initial evaluation)."""
    weights: dict[str, np.ndarray]
    recorder: dict
    state_arrays: dict[str, np.ndarray]
    meta: dict
    directory: Path

    def restore(self, strategy: Strategy) -> None:
        """Put the saved strategy state into `strategy` and the RNG states into place."""
        strategy_arrays = {k: v for k, v in self.state_arrays.items() if not k.startswith("rng/")}
        with _refusing(self.directory / "state.json"):
            restore_strategy(strategy, strategy_arrays, self.meta["strategy"])
        restore_rng(self.state_arrays, self.meta["rng"])

    def check_scenario(self, scenario: Any) -> None:
        """Refuse to continue `scenario` from this checkpoint unless it is the same federation
        and the checkpoint fits it (`_check_scenario`)."""
        shapes = {name: (array.shape, array.dtype.name) for name, array in self.weights.items()}
        _check_scenario(self.directory, self.meta, shapes, scenario)


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    weights: dict[str, np.ndarray],
    strategy: Strategy,
    recorder: dict,
    scenario: Any,
) -> None:
    """Replace `run_dir/checkpoint` by this round's state (temp dir + rename)."""
    strategy_arrays, strategy_meta = strategy_state(strategy)
    rng_arrays, rng_meta = rng_state()
    meta = {
        "round": server_round,
        "recorder": recorder,
        "strategy": strategy_meta,
        "rng": rng_meta,
        "fingerprint": fingerprint(scenario),
        "weights": list(weights),  # safetensors sorts names; the order matters (DP noise)
    }

    def save(tmp: Path) -> None:
        save_file(_contiguous(weights), str(tmp / "weights.safetensors"))
        save_file(_contiguous({**strategy_arrays, **rng_arrays}), str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")

    save_dir_atomic(Path(run_dir) / CHECKPOINT_DIR, save)


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The run's checkpoint directory: `checkpoint/`, or `.checkpoint.old` when the run was
    killed between save_dir_atomic's two renames (the previous round's); None without one."""
    path = Path(run_dir) / CHECKPOINT_DIR
    for candidate in (path, path.with_name(f".{CHECKPOINT_DIR}.old")):
        if candidate.is_dir():
            return candidate
    return None


def load_checkpoint(run_dir: Path, scenario: Any = None) -> Checkpoint:
    """The checkpoint of a run directory, checked whole before any array is read: state.json
    (bounded, every value typed and in range), the arrays' names, shapes and dtypes from the
    safetensors headers and, with `scenario`, everything `Checkpoint.check_scenario` checks;
    then the RNG states. CheckpointError (one line naming the file and the field) otherwise.
    Only safetensors and JSON are read: a checkpoint cannot run code."""
    path = _existing_checkpoint(Path(run_dir))
    meta = _read_meta(path / "state.json")
    weights = _header(path / "weights.safetensors")
    with _refusing(path / "weights.safetensors"):
        _match(
            weights, dict.fromkeys(meta["weights"], (None, WEIGHT_DTYPES)), "state.json's weights"
        )
    with _refusing(path / "state.json"):
        state = _state_arrays(meta, weights)
    with _refusing(path / "state.safetensors"):
        _match(_header(path / "state.safetensors"), state, "the arrays state.json names")
    if scenario is not None:
        _check_scenario(path, meta, weights, scenario)
    arrays = {name: _read(path / name, load_file) for name in FILES[:2]}
    with _refusing(path / "state.safetensors"):
        _check_rng(arrays["state.safetensors"], meta["rng"])
    ordered = {name: arrays["weights.safetensors"][name] for name in meta["weights"]}
    return Checkpoint(
        meta["round"], ordered, meta["recorder"], arrays["state.safetensors"], meta, path
    )


def _existing_checkpoint(run_dir: Path) -> Path:
    path = checkpoint_dir(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from")
    if (path / "state.pkl").exists():
        raise CheckpointError(
            f"{path / 'state.pkl'}: a pickled checkpoint; fedtune never loads pickles "
            "(they can run code): start the run again"
        )
    if not all((path / name).is_file() for name in FILES):
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from")
    return path


def _read_meta(path: Path) -> dict:
    """state.json, at most MAX_JSON_BYTES, every value checked (the record and the strategy's
    fields against a scenario: `_check_scenario`)."""
    with _refusing(path):
        if path.stat().st_size > MAX_JSON_BYTES:
            raise _Invalid("", f"larger than {MAX_JSON_BYTES >> 20} MiB")
        meta = _keys(_parse_json(_read(path, _head), ""), "", META_KEYS)
        _whole(meta["round"], "round", 0, MAX_ROUND)
        _typed(meta["recorder"], dict, "recorder")
        _typed(meta["fingerprint"], dict, "fingerprint")
        _names(meta["weights"], "weights")
        _check_strategy_entries(meta["strategy"])
        _check_rng_meta(meta["rng"])
    return meta


def _head(path: str) -> bytes:
    """A file's first MAX_JSON_BYTES bytes (all of it, unless it grew since its size was
    checked)."""
    with open(path, "rb") as handle:
        return handle.read(MAX_JSON_BYTES)


def _header(path: Path) -> Shapes:
    """Name -> (shape, dtype) of every array in a safetensors file, from its header alone
    (nothing is allocated; safetensors refuses offsets that do not cover the file exactly,
    so the declared sizes are the file's)."""

    def read(name: str) -> Shapes:
        with safe_open(name, "numpy") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118
            return {
                key: (tuple(s.get_shape()), DTYPE_NAMES.get(s.get_dtype(), s.get_dtype()))
                for key, s in slices.items()
            }

    return _read(path, read)


def _state_arrays(meta: dict, weights: Shapes) -> Expected:
    """What state.safetensors must hold: the RNG states, and per array field of the strategy
    one array per weight, of its shape."""
    expected = dict(RNG_ARRAYS)
    for path, entry in meta["strategy"].items():
        for kind in set(entry) & set(ARRAY_KINDS):
            for name in entry[kind]:
                if name not in weights:
                    field = f"strategy entry {short(path)}"
                    raise _Invalid(field, f"names {short(name)}, not one of the weights")
                expected[f"{path}/{name}"] = (weights[name][0], WEIGHT_DTYPES)
            if set(entry[kind]) != set(weights):  # the strategy reads one per weight
                raise _Invalid(f"strategy entry {short(path)}", "must name every weight")
    return expected


def _match(found: Shapes, expected: Expected, what: str) -> None:
    """Refuse arrays other than `expected`'s names, shapes (None: any) and dtypes."""
    for name in sorted(found.keys() - expected.keys()):
        raise _Invalid(short(name), f"is not one of {what}")
    for name in sorted(expected.keys() - found.keys()):
        raise _Invalid(short(name), f"is missing (one of {what})")
    for name, (shape, dtype) in found.items():
        want, dtypes = expected[name]
        if dtype not in dtypes:
            raise _Invalid(short(name), f"is {dtype} {shape}, not {' or '.join(dtypes)}")
        if want is not None and shape != tuple(want):
            raise _Invalid(short(name), f"has shape {shape}, not {tuple(want)}")


def _check_scenario(path: Path, meta: dict, weights: Shapes, scenario: Any) -> None:
    """Refuse to continue `scenario` unless the checkpoint is of the same federation and fits
    it: its weights the model's (names, shapes, dtypes), its strategy state the strategy's
    declared fields, its record the rounds done."""
    changed = _differences(meta["fingerprint"], fingerprint(scenario), "")
    if changed:
        more = f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
        raise CheckpointError(
            f"the scenario differs from the checkpoint's: {changed[0]}{more}; "
            "a resumed run must keep its data, partition, model, seed, codec, privacy "
            "and strategy"
        )
    with _refusing(path / "weights.safetensors"):
        model = {name: (shape, WEIGHT_DTYPES) for name, shape in model_shapes(scenario).items()}
        _match(weights, model, "the model's weights")
    with _refusing(path / "state.json"):
        check_strategy_state(build_strategy(scenario), meta["strategy"])
        _check_record(meta["recorder"], meta["round"])


def model_shapes(scenario: Any) -> dict[str, tuple[int, ...]]:
    """The shapes of the weights a run of `scenario` exchanges, from its model as the server
    builds it (the RNG states are left as they were)."""
    from fedtune.data.corpus import server_eval_data
    from fedtune.modeling.model import load_model, shared_weights

    _, label_names = server_eval_data(scenario)
    cfg = scenario.model
    with torch.random.fork_rng(devices=[]):
        model = load_model(cfg.name, label_names, scenario.seed, cfg.peft, scenario.data.tabular)
    return {name: w.shape for name, w in shared_weights(model, cfg.peft).items()}


def _read(path: Path, reader: Callable[[str], Any]) -> Any:
    try:
        return reader(str(path))
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint file ({first_line(exc)})") from None
