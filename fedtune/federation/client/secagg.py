"""The client half of secure aggregation (`privacy.secagg`): `secure_mod` runs Flower's
`secaggplus_mod` on SecAgg+ train messages and translates its legacy `fitins`/`fitres`
records to and from fedtune's train handler, so the same local training produces the update
(`local - global`), which the mod then weights, clips, quantizes and masks. With SecAgg+ on,
the handler refuses to answer any train message that bypassed the mod. The server half is
`fedtune.federation.server.secagg`. Cheap to import: a ClientApp's start-up pays for it on every
message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from fedtune.federation.exchange import SECAGG_RECORD
from fedtune.records import from_record, to_record

if TYPE_CHECKING:
    from fedtune.config import Scenario

NAMES_KEY = "param-names"
"""Legacy `Parameters` are a list: the train config names its arrays, newline-separated."""
LISTS_KEY = "fedtune-lists"
"""Legacy config values are scalars: list values (the label names) travel as JSON strings,
and this entry names them."""
MASKING = "secagg-masking"
"""Node-state record present while `secure_mod` runs the train handler."""

Handler = Callable[[Message, Context], Message]


def secure_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """`secaggplus_mod` for SecAgg+ train messages; any other message passes through."""
    content = msg.content if msg.has_content() else RecordDict()
    if msg.metadata.message_type != MessageType.TRAIN or SECAGG_RECORD not in content:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, functools.partial(_train_for_masking, handler=call_next))


def _train_for_masking(msg: Message, context: Context, handler: Handler) -> Message:
    """SecAgg+ stage 2: hand the legacy `fitins` to fedtune's train handler as `arrays` and
    `config`, and its reply back as the `fitres` that `secaggplus_mod` masks."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = str(config.pop(NAMES_KEY)).split("\n")
    for key in json.loads(str(config.pop(LISTS_KEY, "[]"))):
        config[key] = json.loads(str(config[key]))
    arrays = dict(zip(names, parameters_to_ndarrays(fitins.parameters), strict=True))
    msg.content = RecordDict({"arrays": to_record(arrays), "config": ConfigRecord(config)})
    context.state[MASKING] = ConfigRecord()
    try:
        reply = handler(msg, context)
    finally:
        del context.state[MASKING]
    update = from_record(reply.content["arrays"])
    metrics = dict(reply.content["metrics"])
    num_examples = int(metrics["num-examples"])
    metrics["secagg_clipped"] = _clipped_share(update, num_examples, context)
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([update[name] for name in names]),
        num_examples,
        metrics,
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _clipped_share(update: dict[str, np.ndarray], num_examples: int, context: Context) -> float:
    """Share of the update's entries that SecAgg+ clips (it clips the update times
    num_examples / max_weight to +-clipping_range)."""
    state = context.state.config_records[RECORD_KEY_STATE]
    limit = float(state["clipping_range"]) * float(state["max_weight"]) / max(num_examples, 1)
    clipped = sum(int(np.count_nonzero(np.abs(u) > limit)) for u in update.values())
    return clipped / max(1, sum(u.size for u in update.values()))


def refuse_unmasked(scenario: Scenario, context: Context) -> None:
    """With `privacy.secagg` on, a train message that did not come through SecAgg+ gets no
    update: the client never sends an unmasked one, whatever the server asks."""
    if scenario.privacy.secagg.enabled and MASKING not in context.state.config_records:
        raise PermissionError("privacy.secagg is on: refusing to send an unmasked update")
