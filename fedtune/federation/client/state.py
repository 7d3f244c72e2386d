"""A node's own state (`Context.state` records named `fedtune/...`: the codec's
error-feedback residual, the DP-SGD accountant's history) kept on the node's own disk after
every train message, so that a resumed run continues each node exactly where it was.

The state never leaves the node: in simulation it lies under the run directory
(`nodes/node-<i>/state/`, the one machine's disk), in deployment under the node's
`cache-dir`. Files are safetensors (arrays) with JSON metadata (config records), written
atomically; a node keeps the state after its latest round and the one before it, which is
the one a run resumed from the server's last checkpoint needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from safetensors import safe_open
from safetensors.numpy import save

from fedtune.atomic import write_atomic

PREFIX = "fedtune/"
"""Records of `Context.state` under this prefix are the node's persistent state."""
ROUND = f"{PREFIX}state-round"
"""Present while the in-memory state is current (absent in a fresh or resumed node)."""
FILE = re.compile(r"round-(\d+)\.safetensors")


def _rounds(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    found = (FILE.fullmatch(path.name) for path in directory.iterdir())
    return {int(m.group(1)): directory / m.group(0) for m in found if m}


def save_state(state: RecordDict, directory: Path | None, server_round: int) -> None:
    """Write the node's persistent records as of the end of `server_round` (nowhere when
    `directory` is None)."""
    if directory is None:
        return
    arrays = {
        f"{key}\n{name}": array.numpy()
        for key, record in state.array_records.items()
        if key.startswith(PREFIX)
        for name, array in record.items()
    }
    configs = {
        key: dict(record)
        for key, record in state.config_records.items()
        if key.startswith(PREFIX) and key != ROUND
    }
    metadata = {"configs": json.dumps(configs), "arrays": json.dumps(list(arrays))}
    write_atomic(directory / f"round-{server_round}.safetensors", save(arrays, metadata))
    state[ROUND] = ConfigRecord({"round": server_round})
    older = sorted(r for r in _rounds(directory) if r < server_round)
    for stale in older[:-1]:  # keep the previous one: a resume may redo this round
        _rounds(directory)[stale].unlink(missing_ok=True)


def restore_state(state: RecordDict, directory: Path | None, server_round: int) -> None:
    """In a node without current state (fresh process of a resumed run), load what it had
    after its last round before `server_round`."""
    if directory is None or ROUND in state.config_records:
        return
    earlier = {r: p for r, p in _rounds(directory).items() if r < server_round}
    if not earlier:
        return
    with safe_open(str(earlier[max(earlier)]), framework="np") as stored:
        metadata = stored.metadata() or {}
        grouped: dict[str, dict] = {}
        for joined in json.loads(metadata.get("arrays", "[]")):
            key, _, name = joined.partition("\n")
            grouped.setdefault(key, {})[name] = stored.get_tensor(joined)
    from fedtune.records import to_record

    for key, arrays in grouped.items():
        state[key] = to_record(arrays) if arrays else ArrayRecord()
    for key, values in json.loads(metadata.get("configs", "{}")).items():
        state[key] = ConfigRecord(values)
