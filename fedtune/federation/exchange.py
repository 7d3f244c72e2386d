"""What the server exchanges with the clients: messages sent and received, observed as they
go (progress, bytes, failures) and kept per exchange for the round's record."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

if TYPE_CHECKING:
    from fedtune.runs.recorder import Progress


SECAGG_RECORD = RECORD_KEY_CONFIGS
"""The ConfigRecord of a message that carries SecAgg+ protocol data (keys, shares, masked
vectors)."""


def secagg_bytes(content: RecordDict) -> int:
    """Bytes of the SecAgg+ record in a message's content (0 without one): bytes and
    strings by length, numbers as 8 (`ConfigRecord.count_bytes` fails on empty lists)."""
    record = content.config_records.get(SECAGG_RECORD, {})
    values = [
        v for value in record.values() for v in (value if isinstance(value, list) else [value])
    ]
    return sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in values)


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (Flower's ArrayRecord.count_bytes), and of its
    SecAgg+ record (keys, key shares, masked update) if any."""
    content = message.content
    arrays = sum(record.count_bytes() for record in content.array_records.values())
    return arrays + secagg_bytes(content)


@dataclass
class Exchange:
    """One finished send-and-receive: what was sent, what came back, and each client's line
    for metrics.jsonl, taken as the replies arrived (aggregation may rewrite them later)."""

    kind: str
    server_round: int
    sent: int
    replies: list[Message]
    bytes_down: dict[int, int]
    """Bytes sent to each node."""
    bytes_up: dict[int, int]
    """Bytes received from each node."""
    clients: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.clients = [client_line(r, self.bytes_down, self.bytes_up) for r in self.replies]

    def failures(self) -> dict:
        """Sampled, answered, failed (error reply) and timed-out counts."""
        errors = sum(1 for r in self.replies if r.has_error())
        return {
            "sampled": self.sent,
            "replied": len(self.replies) - errors,
            "errors": errors,
            "timed_out": self.sent - len(self.replies),
        }


def client_line(reply: Message, bytes_down: dict[int, int], bytes_up: dict[int, int]) -> dict:
    """One client's line in metrics.jsonl: its metrics (or error) and its bytes each way."""
    node_id = reply.metadata.src_node_id
    node = {
        "node_id": node_id,
        "bytes_down": bytes_down.get(node_id, 0),
        "bytes_up": bytes_up.get(node_id, 0),
    }
    if reply.has_error():
        return {**node, "error": client_error(reply.error.reason)}
    return {**node, **dict(reply.content.metric_records.get("metrics", {}))}


def client_error(reason: str) -> str:
    """The `[client N, round R: Error: message]` part of a Flower error reason, if any."""
    found = re.search(r"\[client .*?\]", reason, re.DOTALL)
    return found.group(0)[1:-1] if found else reason.strip().splitlines()[-1]


class GridView(Grid):
    """A Grid that hands every call to the Grid it wraps (`grid`): subclasses change what
    they need (which nodes are listed, how a send-and-receive is watched)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):  # noqa: ANN201 - flwr's Run
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class ObservedGrid(GridView):
    """A Grid that shows each reply as it arrives (progress) and keeps each finished
    exchange (per-client metrics, bytes) until `take_exchanges`; everything else is the
    wrapped Grid's."""

    def __init__(self, grid: Grid, progress: Progress) -> None:
        super().__init__(grid)
        self.progress = progress
        self.exchanges: list[Exchange] = []
        self.partition_of: dict[int, int] = {}

    def take_exchanges(self) -> list[Exchange]:
        """The exchanges finished since the last call."""
        taken, self.exchanges = self.exchanges, []
        return taken

    def identify(self, num_nodes: int, timeout: float) -> None:
        """Learn every node's partition id, so that nodes are listed, and so sampled, in
        partition order: simulation node ids are random per run, so only then does the
        seeded sampling pick the same clients in every run. In simulation the in-memory
        LinkState says it at no cost; elsewhere each node is asked (one query message)."""
        in_simulation = simulated_partitions(self.grid, num_nodes, timeout)
        self.partition_of = in_simulation or queried_partitions(self.grid, timeout)

    def get_node_ids(self) -> Iterable[int]:
        unknown = len(self.partition_of)  # nodes that did not say: after the others
        return sorted(
            self.grid.get_node_ids(), key=lambda n: (self.partition_of.get(n, unknown), n)
        )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        kind = messages[0].metadata.message_type
        config = messages[0].content.config_records.get("config", {})  # SecAgg+: group id
        server_round = int(config.get("server-round", messages[0].metadata.group_id or 0))
        bytes_down = {m.metadata.dst_node_id: payload_bytes(m) for m in messages}
        pending = set(self.push_messages(messages))
        total, replies = len(pending), []
        deadline = None if timeout is None else time.monotonic() + timeout
        self.progress.phase(server_round, kind, 0, total)
        while pending and (deadline is None or time.monotonic() < deadline):
            new = list(self.pull_messages(pending))
            if new:
                replies.extend(new)
                pending -= {m.metadata.reply_to_message_id for m in new}
                self.progress.phase(server_round, kind, len(replies), total)
            else:
                time.sleep(0.1)
        bytes_up = {r.metadata.src_node_id: payload_bytes(r) for r in replies if r.has_content()}
        self.exchanges.append(Exchange(kind, server_round, total, replies, bytes_down, bytes_up))
        return replies


def queried_partitions(grid: Grid, timeout: float) -> dict[int, int]:
    """Each node's answer to an identify query (nodes that do not say are left out)."""
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in grid.get_node_ids()
    ]
    partition_of = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):  # not observed
        metrics = reply.content.metric_records.get("metrics", {}) if reply.has_content() else {}
        if "partition-id" in metrics:
            partition_of[reply.metadata.src_node_id] = int(metrics["partition-id"])
    return partition_of


def simulated_partitions(grid: Grid, num_nodes: int, timeout: float) -> dict[int, int]:
    """Partition ids of a simulation's `num_nodes` nodes ({} outside one): Flower's
    Simulation Engine registers the node of partition i as the i-th node of its in-memory
    LinkState (`vce_api._register_nodes`), which keeps nodes in registration order. The
    ServerApp may start before registration ends: wait for it (up to `timeout`)."""
    if not isinstance(grid, InMemoryGrid):
        return {}
    deadline = time.monotonic() + timeout
    while len(nodes := grid.state.get_node_info()) < num_nodes and time.monotonic() < deadline:
        time.sleep(0.05)
    return {info.node_id: pid for pid, info in enumerate(nodes)}


@dataclass
class TrainOutcome:
    """What one train round gave: the new global weights (None: the global model is kept),
    the strategy's aggregate of the clients' train metrics, the updates it rejected, and the
    round's exchange with the clients."""

    arrays: ArrayRecord | None
    metrics: dict
    rejected: list[dict]
    exchange: Exchange
