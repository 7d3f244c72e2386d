"""`fedtune run --ray-address`: the Simulation Engine on an existing two-node Ray cluster
(`ray.cluster_utils.Cluster`: a head and a second raylet on this machine), with clients
placed on both nodes, as the Ray node id each client reports shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fedtune, write_scenario
from ray.cluster_utils import Cluster


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.mark.slow("starts a two-node Ray cluster")
def test_run_on_a_two_node_ray_cluster(make_scenario, tmp_path: Path, two_node_cluster) -> None:
    scenario = make_scenario(
        partition={"kind": "iid", "num_clients": 4},
        federation={"rounds": 2, "min_available_nodes": 4},
        data={"val_size": 0.0},
    )
    path = write_scenario(scenario, tmp_path / "tiny.yaml")
    result = fedtune("run", str(path), "--quiet", "--ray-address", two_node_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (Path(scenario.output.dir) / "metrics.jsonl").read_text().splitlines()
    nodes = {
        client["ray-node"]
        for line in map(json.loads, lines[1:])
        for client in line["clients"]["train"]
    }
    assert len(nodes) == 2, f"clients ran on Ray nodes {nodes}"


@pytest.mark.slow("waits for Ray to give up on an address")
def test_an_unreachable_cluster_is_one_line(make_scenario, tmp_path: Path) -> None:
    path = write_scenario(make_scenario(), tmp_path / "tiny.yaml")
    result = fedtune("run", str(path), "--quiet", "--ray-address", "127.0.0.1:1")
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "--ray-address 127.0.0.1:1: no Ray cluster answers there" in err[0]
