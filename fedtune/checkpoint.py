"""Checkpoints: after every round, the global weights and everything needed to continue
exactly (round, strategy state, recorded history, RNG states), written atomically."""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedtune.atomic import save_dir_atomic
from fedtune.errors import FedtuneError

CHECKPOINT_DIR = "checkpoint"


class CheckpointError(FedtuneError, ValueError):
    """No usable checkpoint where one was expected."""


@dataclass
class Checkpoint:
    server_round: int
    """The last complete round (0: only the initial evaluation)."""
    weights: dict[str, np.ndarray]
    strategy: Strategy
    recorder: dict
    rng: dict[str, Any]

    def restore_rng(self) -> None:
        random.setstate(self.rng["python"])
        np.random.set_state(self.rng["numpy"])
        torch.set_rng_state(self.rng["torch"])


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    weights: dict[str, np.ndarray],
    strategy: Strategy,
    recorder: dict,
) -> None:
    """Replace `run_dir/checkpoint` by this round's state (temp dir + rename)."""
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    state = {"round": server_round, "strategy": strategy, "recorder": recorder, "rng": rng}

    def save(tmp: Path) -> None:
        np.savez(tmp / "weights.npz", **weights)
        (tmp / "state.pkl").write_bytes(pickle.dumps(state))

    save_dir_atomic(Path(run_dir) / CHECKPOINT_DIR, save)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint of a run directory (it is trusted: it holds pickled server state)."""
    path = Path(run_dir) / CHECKPOINT_DIR
    if not path.is_dir():  # killed between save_dir_atomic's two renames: the previous one
        path = path.with_name(f".{CHECKPOINT_DIR}.old")
    if not (path / "state.pkl").is_file() or not (path / "weights.npz").is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from")
    state = pickle.loads((path / "state.pkl").read_bytes())
    with np.load(path / "weights.npz") as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    return Checkpoint(state["round"], weights, state["strategy"], state["recorder"], state["rng"])
