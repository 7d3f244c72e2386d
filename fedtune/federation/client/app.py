"""ClientApp: fine-tune on the node's private shard, reply with the weight update only.

This module is thin (flwr and numpy): Flower's SuperNode starts a fresh process for every
message, and the heavy work (torch, transformers, the model and the shard) lives in
`fedtune.federation.client.node`, imported on the first message, or in a warm `fedtune worker` next
to the node when its `--node-config` names one (`worker-socket`). What a reply holds is
`fedtune.federation.client.node`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtune.federation.client import worker
from fedtune.federation.client.secagg import secure_mod
from fedtune.federation.process import startup_seconds
from fedtune.federation.statistics import LABEL_COUNTS_ACTION

if TYPE_CHECKING:
    from fedtune.config import Scenario


class ClientError(RuntimeError):
    """A client failed; the message names the client and the round (it reaches the server)."""


def reported(handler: Callable[[Message, Context], Message]) -> Callable:
    """Re-raise any failure of `handler` as a ClientError naming client, round and error."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            client = context.node_config.get("partition-id", context.node_id)
            server_round = msg.content["config"].get("server-round", "?")
            raise ClientError(
                f"[client {client}, round {server_round}: {type(exc).__name__}: {exc}]"
            ) from exc

    return wrapper


def handled(kind: str, scenario: Scenario | None) -> Callable[[Message, Context], Message]:
    """The `kind` handler: on the node's worker when it has one, else in this process."""

    @reported
    def handler(msg: Message, context: Context) -> Message:
        socket_path = context.node_config.get(worker.WORKER_SOCKET)
        if socket_path:
            content = worker.call(str(socket_path), kind, msg, context, startup_seconds())
        else:
            from fedtune.config import scenario_from_run_config
            from fedtune.federation.client.node import (
                HANDLERS,  # the start-up includes these imports
            )

            startup = startup_seconds()
            active = scenario or scenario_from_run_config(context.run_config)
            content = HANDLERS[kind](msg.content, context, active, startup)
        return Message(content, reply_to=msg)

    handler.__name__ = handler.__qualname__ = kind.replace("-", "_")
    return handler


def build_client_app(scenario: Scenario | None = None) -> ClientApp:
    """A ClientApp bound to `scenario`, or reading it from the run config (`flwr run`)."""
    app = ClientApp()
    app.train(mods=[secure_mod])(handled("train", scenario))
    app.evaluate()(handled("evaluate", scenario))
    app.query(LABEL_COUNTS_ACTION)(handled(LABEL_COUNTS_ACTION, scenario))

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        """The node's partition id, so the server can sample clients reproducibly."""
        node = context.node_config
        metrics = {"partition-id": int(node["partition-id"])} if "partition-id" in node else {}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = build_client_app()
"""The ClientApp for `flwr run .` (scenario from the run config)."""
