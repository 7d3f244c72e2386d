"""Checkpoints: after every round, the global weights and everything needed to continue
exactly (round, strategy state, recorded history, RNG states), written atomically.

Data only, never code: arrays go to safetensors files, everything else to JSON, and the
strategy's state is read from and written back into a freshly built strategy. Nothing here
(or anywhere in fedtune) unpickles.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedtune.atomic import save_dir_atomic
from fedtune.errors import FedtuneError, first_line

CHECKPOINT_DIR = "checkpoint"
FILES = ("weights.safetensors", "state.safetensors", "state.json")
FINGERPRINT = ("seed", "model", "data", "partition", "codec", "privacy")
"""Scenario sections a resumed run must share with its checkpoint (and the strategy)."""


class CheckpointError(FedtuneError, ValueError):
    """No usable checkpoint where one was expected."""


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
    return [] if saved == current else [f"{where.lstrip('.')} {saved!r} -> {current!r}"]


# ------------------------------------------------------------------ strategy state


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict]:
    """The state of `strategy` and the strategies it wraps, as arrays + JSON: numbers,
    strings, arrays (and dicts/records of them) and accountants (by their `state_dict`).
    Functions, configuration objects and private attributes are rebuilt from the scenario."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for path, value in _attributes(strategy, ""):
        if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            meta[path] = {"accountant": value.state_dict()}
        elif isinstance(value, np.ndarray):
            arrays[path], meta[path] = value, {"array": True}
        elif isinstance(value, ArrayRecord | dict) and value and _all_arrays(value):
            kind = "record" if isinstance(value, ArrayRecord) else "arrays"
            for name, array in value.items():
                arrays[f"{path}/{name}"] = array.numpy() if kind == "record" else array
            meta[path] = {kind: list(value)}
        elif _is_json(value):
            meta[path] = {"json": value}
    return arrays, meta


def restore_strategy(strategy: Strategy, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a `strategy_state` back into a strategy built from the same scenario."""
    owners = dict(_owners(strategy, ""))
    for path, entry in meta.items():
        owner_path, _, name = path.rpartition(".")
        owner = owners.get(owner_path)
        if owner is None:
            raise CheckpointError(f"checkpoint: strategy state {path!r} does not fit the strategy")
        if "accountant" in entry:
            getattr(owner, name).load_state_dict(entry["accountant"])
        elif "array" in entry:
            setattr(owner, name, arrays[path])
        elif "arrays" in entry:
            setattr(owner, name, {k: arrays[f"{path}/{k}"] for k in entry["arrays"]})
        elif "record" in entry:
            from fedtune.records import to_record

            setattr(owner, name, to_record({k: arrays[f"{path}/{k}"] for k in entry["record"]}))
        else:
            setattr(owner, name, entry["json"])


def _owners(strategy: Strategy, path: str) -> list[tuple[str, Strategy]]:
    found = [(path, strategy)]
    for name, value in vars(strategy).items():
        if isinstance(value, Strategy):
            found += _owners(value, f"{path}.{name}")
    return found


def _attributes(strategy: Strategy, path: str) -> list[tuple[str, Any]]:
    found = []
    for owner_path, owner in _owners(strategy, path):
        for name, value in vars(owner).items():
            if not name.startswith("_") and not isinstance(value, Strategy):
                found.append((f"{owner_path}.{name}", value))
    return found


def _all_arrays(value: ArrayRecord | dict) -> bool:
    if isinstance(value, ArrayRecord):
        return True
    return all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())


def _is_json(value: Any) -> bool:
    if callable(value):
        return False
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


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


def restore_rng(arrays: dict[str, np.ndarray], meta: dict) -> None:
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in arrays["rng/python"]), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, arrays["rng/numpy"], pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(arrays["rng/torch"].copy()))


# ------------------------------------------------------------------ files


@dataclass
class Checkpoint:
    server_round: int
    """The last complete round (0: only the initial evaluation)."""
    weights: dict[str, np.ndarray]
    recorder: dict
    state_arrays: dict[str, np.ndarray]
    meta: dict

    def restore(self, strategy: Strategy) -> None:
        """Put the saved strategy state into `strategy` and the RNG states into place."""
        strategy_arrays = {k: v for k, v in self.state_arrays.items() if not k.startswith("rng/")}
        restore_strategy(strategy, strategy_arrays, self.meta["strategy"])
        restore_rng(self.state_arrays, self.meta["rng"])

    def check_scenario(self, scenario: Any) -> None:
        """Refuse to continue a federation other than the checkpoint's."""
        changed = _differences(self.meta["fingerprint"], fingerprint(scenario), "")
        if changed:
            more = f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
            raise CheckpointError(
                f"the scenario differs from the checkpoint's: {changed[0]}{more}; "
                "a resumed run must keep its data, partition, model, seed, codec, privacy "
                "and strategy"
            )


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


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint of a run directory; CheckpointError (one line) if there is none or it
    is damaged. Only safetensors and JSON are read: a checkpoint cannot run code."""
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
    weights = _read(path / "weights.safetensors", load_file)
    state_arrays = _read(path / "state.safetensors", load_file)
    meta = _read(path / "state.json", lambda p: json.loads(Path(p).read_text(encoding="utf-8")))
    keys = ("round", "recorder", "strategy", "rng", "fingerprint", "weights")
    if not isinstance(meta, dict) or any(key not in meta for key in keys):
        raise CheckpointError(f"{path / 'state.json'}: damaged checkpoint (missing keys)")
    if set(meta["weights"]) != set(weights):
        raise CheckpointError(f"{path}: damaged checkpoint (weights do not match state.json)")
    weights = {name: weights[name] for name in meta["weights"]}
    return Checkpoint(int(meta["round"]), weights, meta["recorder"], state_arrays, meta)


def _read(path: Path, reader: Callable[[str], Any]) -> Any:
    try:
        return reader(str(path))
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint file ({first_line(exc)})") from None
