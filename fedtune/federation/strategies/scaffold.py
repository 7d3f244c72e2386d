"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", option II): control variates that correct each client's drift towards
its own optimum, for label-skewed federations.

What travels, per sampled client and round (each as float32, next to the usual records):

- down, `scaffold-c`: the server control variate `c` (one array per trainable parameter), an
  ArrayRecord beside the global weights in `arrays`;
- up, `scaffold-dc`: the client's control-variate delta `c_i+ - c_i`, an ArrayRecord beside
  the update in `arrays`. The server takes it out of the reply before aggregation, so
  `DeltaUpdates`, the codec and update validation see only the update, and Flower's FedAvg
  its one ArrayRecord.

Where the variates live: `c` is the public attribute `control` of the server strategy
(checkpointed with it, as every public array dict is); each node keeps its `c_i` in
`Context.state` under `fedtune/scaffold-c`, which `fedtune.federation.client.state` keeps on the
node's disk after every round, so a resumed run continues both exactly.

The client trains with the loss term `<c - c_i, w>` (gradient `c - c_i`: every step follows
`g_i(w) - c_i + c`), and sets `c_i+ = g_i(x)`, option I: the mean gradient of its loss at the
global weights `x`, over its first `gradient_batches` training batches (sent with the train
message; all of them make it exact), taken before local training. Option II's
`c_i - c + (x - y_i) / (K lr)` estimates the same gradient from the update, exactly only for
plain SGD at a constant rate: with fedtune's AdamW clients it measured Adam's steps, not
gradients (|c - c_i| of 600..1,800 against `max_grad_norm` 1), and the correction then set the
direction of every clipped step. Option I keeps `c` and `c_i` in the units of the gradients
they correct, whatever the client's optimizer.

The server: FedAvg (weighted by example count, as every fedtune strategy) with a global
learning rate, `x+ = x + eta_g * mean(y_i - x)`, and `c+ = c + (|S| / N) * mean(dc_i)` with the
same weights (N: the federation's nodes, |S|: replies whose update was aggregated). With full
participation `c` is then exactly the example-weighted mean of the clients' `c_i`, the one
whose fixed point is the optimum of FedAvg's objective; with partial participation it is an
estimate of it (exact when shards are equally large, as in the paper's unweighted form).

The client half (the loss term, `c_i` in the node's state) is `fedtune.federation.client.scaffold`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedtune.federation.client.scaffold import (
    CONTROL_DELTA,
    DEFAULT_GRADIENT_BATCHES,
    GRADIENT_BATCHES,
    SERVER_CONTROL,
)
from fedtune.records import from_record, to_record

Arrays = dict[str, np.ndarray]


# ------------------------------------------------------------------ mathematics


def aggregate_controls(
    c: Arrays, deltas: list[Arrays], weights: list[float], num_clients: int
) -> Arrays:
    """`c + (|S| / N) * mean(deltas)`, the mean weighted by `weights` (example counts) and
    summed in the given order (float64, rounded to float32 once)."""
    if not deltas:
        return c
    total = float(sum(weights))
    shares = [w / total for w in weights] if total > 0 else [1.0 / len(deltas)] * len(deltas)
    participation = len(deltas) / max(num_clients, len(deltas))
    new = {}
    for name, value in c.items():
        mean = sum(
            share * d[name].astype(np.float64) for share, d in zip(shares, deltas, strict=True)
        )
        new[name] = (value.astype(np.float64) + participation * mean).astype(np.float32)
    return new


def server_step(x: Arrays, averaged: Arrays, eta_g: float) -> Arrays:
    """`x + eta_g * (averaged - x)`: FedAvg's new weights with a global learning rate
    (`averaged` itself, bit for bit, at 1)."""
    if eta_g == 1.0:
        return averaged
    return {
        name: (x[name] + eta_g * (averaged[name] - x[name])).astype(x[name].dtype)
        for name in averaged
    }


# ------------------------------------------------------------------ server side


class Scaffold(FedAvg):
    """SCAFFOLD's server: Flower's FedAvg with a global learning rate `eta_g` and the server
    control variate `control` (`c`), sent with every train message and updated from the
    deltas the clients reply with. Use it behind `DeltaUpdates` (as `build_strategy` does)."""

    def __init__(
        self,
        eta_g: float = 1.0,
        gradient_batches: int = DEFAULT_GRADIENT_BATCHES,
        **kwargs: Any,
    ) -> None:
        if not (math.isfinite(eta_g) and eta_g > 0):
            raise ValueError(f"eta_g must be a positive number, not {eta_g}")
        if not (isinstance(gradient_batches, int) and gradient_batches >= 1):
            raise ValueError(
                f"gradient_batches must be a whole number >= 1, not {gradient_batches}"
            )
        super().__init__(**kwargs)
        self.eta_g = eta_g
        self.gradient_batches = gradient_batches
        self.control: Arrays = {}
        self._global: Arrays = {}
        self._num_nodes = 0

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> SCAFFOLD: eta_g (%s), gradient_batches (%s)",
            self.eta_g,
            self.gradient_batches,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._global = from_record(arrays)
        self._num_nodes = len(list(grid.get_node_ids()))
        if not self.control:  # c = 0 before the first round
            self.control = {k: np.zeros_like(v, dtype=np.float32) for k, v in self._global.items()}
        elif set(self.control) != set(self._global):
            raise ValueError("scaffold: the server control variate does not fit the model")
        record = to_record(self.control)
        for message in messages:  # they share one RecordDict
            message.content[SERVER_CONTROL] = record
            message.content["config"][GRADIENT_BATCHES] = self.gradient_batches
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = [
            (reply, reply.content.pop(CONTROL_DELTA, None))  # FedAvg sees the update alone
            for reply in replies
            if reply.has_content()
        ]
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        fitting, weights = [], []
        for reply, record in deltas:
            delta = self._fitting(reply, record)
            if delta is not None:
                fitting.append(delta)
                reply_metrics = next(iter(reply.content.metric_records.values()))
                weights.append(float(reply_metrics[self.weighted_by_key]))
        self.control = aggregate_controls(self.control, fitting, weights, self._num_nodes)
        return to_record(server_step(self._global, from_record(averaged), self.eta_g)), metrics

    def _fitting(self, reply: Message, record: ArrayRecord | None) -> Arrays | None:
        """The reply's control-variate delta if it fits `c` (names, shapes, finite values);
        otherwise None, logged: the update still counts, `c` ignores the client."""
        client = reply.metadata.src_node_id
        if not isinstance(record, ArrayRecord):
            log(WARNING, "node %s: no SCAFFOLD control-variate delta; c ignores it", client)
            return None
        delta = from_record(record)
        fits = set(delta) == set(self.control) and all(
            delta[k].shape == v.shape and np.isfinite(delta[k]).all()
            for k, v in self.control.items()
        )
        if not fits:
            log(WARNING, "node %s: SCAFFOLD delta misfit or not finite; c ignores it", client)
            return None
        return delta
