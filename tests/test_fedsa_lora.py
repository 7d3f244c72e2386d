"""FedSA-LoRA: A and the head are shared; each node's B trains on its shard and never leaves
the node, and the node evaluates its own model (shared A with its personal B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LocalGrid
from flwr.app import MessageType

import fedtune.federation.client.node
from fedtune.federation.client.node import PERSONAL
from fedtune.federation.server.app import FederatedRun
from fedtune.records import from_record

B = ".lora_B."


def test_b_never_leaves_a_node_and_each_node_evaluates_its_own(
    make_scenario, task_identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = make_scenario(model={"peft": {"method": "fedsa_lora", "rank": 4}})
    evaluated_b: list[dict[str, np.ndarray]] = []
    real_evaluate = fedtune.federation.client.node.evaluate

    def spy(model, loader, device):  # noqa: ANN001, ANN202
        evaluated_b.append(
            {n: p.detach().numpy().copy() for n, p in model.named_parameters() if B in n}
        )
        return real_evaluate(model, loader, device)

    monkeypatch.setattr(fedtune.federation.client.node, "evaluate", spy)
    grid = LocalGrid(scenario)
    run = FederatedRun(grid, scenario, tmp_path / "run", quiet=True, resume=False)
    assert run.run()["rounds_aggregated"] == 2
    assert run.weights and not any(B in name for name in run.weights)
    assert any(".lora_A." in name for name in run.weights)
    for reply in grid.received:  # the payload audit: no reply carries a B
        for record in reply.content.array_records.values():
            assert not any(B in key for key in record), reply.metadata.message_type
    personal = {
        pid: from_record(grid.contexts[pid + 1].state.array_records[PERSONAL]) for pid in (0, 1)
    }
    assert set(personal[0]) == set(personal[1]) and all(B in n for n in personal[0])
    for name in personal[0]:
        assert np.abs(personal[0][name]).max() > 0, "each node's B trained"
    assert any(not np.array_equal(personal[0][n], personal[1][n]) for n in personal[0])
    # The last round's evaluations ran each node's own B (nodes 0 and 1, in order).
    evaluations = [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE]
    last = [m.metadata.dst_node_id - 1 for m in evaluations[-2:]]
    for pid, seen in zip(last, evaluated_b[-2:], strict=True):
        for name, value in personal[pid].items():
            assert np.array_equal(seen[name], value), f"node {pid} evaluated another B"


def test_personal_b_survives_a_fresh_node_process(
    make_scenario, task_identity, tmp_path: Path
) -> None:
    """A node whose in-memory state is gone (a resumed run, a new process) reads its B from
    its own disk."""
    scenario = make_scenario(model={"peft": {"method": "fedsa_lora", "rank": 4}})
    grid = LocalGrid(scenario)
    FederatedRun(grid, scenario, tmp_path / "run", quiet=True, resume=False).run()
    before = from_record(grid.contexts[1].state.array_records[PERSONAL])
    node_dirs = sorted((tmp_path / "run" / "nodes").iterdir())
    assert len(node_dirs) == 2
    from fedtune.federation.client.state import restore_state

    state = type(grid.contexts[1].state)()
    restore_state(state, node_dirs[0] / "state", scenario.federation.rounds + 1)
    after = from_record(state.array_records[PERSONAL])
    assert set(after) == set(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
