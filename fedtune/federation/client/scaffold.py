"""SCAFFOLD's client half (the server is `fedtune.federation.strategies.scaffold`): the
records a train message and its reply carry, the correction as a loss term, and the node's
control variate `c_i`, kept in `Context.state`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedtune.records import from_record, to_record

SERVER_CONTROL = "scaffold-c"
"""The train message's record holding the server control variate `c`."""
CONTROL_DELTA = "scaffold-dc"
"""The train reply's record holding the client's control-variate delta `c_i+ - c_i`."""
GRADIENT_BATCHES = "scaffold-gradient-batches"
"""The train config's entry: how many batches a client's gradient at `x` is taken over."""
DEFAULT_GRADIENT_BATCHES = 8
CLIENT_CONTROL = "fedtune/scaffold-c"
"""The node-state record (`Context.state`) holding the client's control variate `c_i`; its
`fedtune/` prefix makes `fedtune.federation.client.state` persist it."""

Arrays = dict[str, np.ndarray]


def scaffold_term(model: Any, c: Arrays, c_i: Arrays) -> Callable[[], Any]:
    """SCAFFOLD's correction as a loss term, `<c - c_i, w>` over the trainable weights named
    in `c`: its gradient `c - c_i` turns each local gradient `g_i(w)` into `g_i(w) - c_i + c`."""
    import torch

    params = dict(model.named_parameters())
    pairs = [(params[name], torch.from_numpy(c[name] - c_i[name])) for name in c]
    placed: list = []

    def term() -> torch.Tensor:
        if not placed:  # on the parameters' device, known once training has started
            placed.extend((p, d.to(device=p.device, dtype=p.dtype)) for p, d in pairs)
        return sum((p * d).sum() for p, d in placed)

    return term


def client_controls(received: RecordDict, state: RecordDict) -> tuple[Arrays, Arrays] | None:
    """`(c, c_i)` for a train message that carries the server's `c` (None otherwise):
    `c_i` from the node's state, zeros on its first SCAFFOLD round."""
    if SERVER_CONTROL not in received.array_records:
        return None
    c = from_record(received.array_records[SERVER_CONTROL])
    kept = state.array_records.get(CLIENT_CONTROL)
    c_i = from_record(kept) if kept is not None else {k: np.zeros_like(v) for k, v in c.items()}
    if set(c_i) != set(c) or any(c_i[k].shape != v.shape for k, v in c.items()):
        raise ValueError("scaffold: the node's control variate does not fit the server's")
    return c, c_i


def correction_terms(model: Any, received: RecordDict, state: RecordDict) -> list:
    """The loss term for this train message: SCAFFOLD's correction when the server sent `c`."""
    controls = client_controls(received, state)
    return [] if controls is None else [scaffold_term(model, *controls)]


def new_client_control(
    gradient: Arrays, received: RecordDict, state: RecordDict
) -> ArrayRecord | None:
    """After local training: store `c_i+ = gradient` (the loss's mean gradient at the global
    weights) in the node's state and return the delta `c_i+ - c_i` to send (None when the
    server did not send `c`)."""
    controls = client_controls(received, state)
    if controls is None:
        return None
    c, c_i = controls
    new = {name: np.asarray(gradient[name], dtype=np.float32) for name in c}
    state[CLIENT_CONTROL] = to_record(new)
    return to_record({name: new[name] - c_i[name] for name in c})


def gradient_batches(received: RecordDict) -> int | None:
    """How many batches the client's `c_i+` is estimated on (None: not a SCAFFOLD message)."""
    if SERVER_CONTROL not in received.array_records:
        return None
    return int(received["config"].get(GRADIENT_BATCHES, DEFAULT_GRADIENT_BATCHES))
