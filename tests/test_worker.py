"""The warm worker (`fedtune worker`): a node's messages answered by a long-lived process
over an owner-only unix socket give the in-process replies; a failed message leaves it
serving; a worker that is down is an error naming the node; other users are refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import node_context
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedtune.data.corpus import build_federated_data
from fedtune.federation.client import worker as worker_module
from fedtune.federation.client.app import ClientError, build_client_app
from fedtune.federation.client.worker import WORKER_SOCKET, WorkerError, WorkerSocketError, listen
from fedtune.modeling.model import load_model, trainable_weights
from fedtune.records import from_record, to_record

READY = "listening on"


@pytest.fixture
def worker(make_scenario) -> Iterator[dict]:
    """A `fedtune worker` subprocess on a fresh socket, and the tiny scenario's file."""
    scenario = make_scenario()
    folder = Path(tempfile.mkdtemp(prefix="fedtune-test-"))
    scenario_file = folder / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    socket_path = folder / "w.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "worker", "--socket", str(socket_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    assert READY in line, line + proc.stdout.read()
    yield {"scenario": scenario, "file": scenario_file, "socket": socket_path, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)
    assert not socket_path.exists(), "the worker removes its socket when it stops"


def _context(worker: dict | None, scenario, partition_id: int = 0) -> Context:
    context = node_context(scenario.partition.num_clients, partition_id)
    if worker is not None:
        context.node_config[WORKER_SOCKET] = str(worker["socket"])
        context.run_config.update({"scenario": str(worker["file"]), "set": ""})
    return context


def _train_message(scenario, server_round: int = 1) -> Message:
    fed = build_federated_data(scenario)
    weights = trainable_weights(load_model(scenario.model.name, fed.label_names, scenario.seed))
    config = ConfigRecord({"server-round": server_round, "label-names": list(fed.label_names)})
    content = RecordDict({"arrays": to_record(weights), "config": config})
    return Message(content, dst_node_id=1, message_type="train")


@pytest.mark.slow("a fedtune worker process")
def test_worker_reply_equals_the_in_process_reply(worker, task_identity) -> None:
    scenario = worker["scenario"]
    app = build_client_app()
    msg = _train_message(scenario)
    warm = app(msg, _context(worker, scenario)).content
    local = build_client_app(scenario)(msg, _context(None, scenario)).content
    assert set(warm.keys()) == set(local.keys()) == {"arrays", "metrics"}
    got, expected = from_record(warm["arrays"]), from_record(local["arrays"])
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6)
    assert warm["metrics"]["num-examples"] == local["metrics"]["num-examples"]
    # the second message finds the model and the shard loaded
    again = app(_train_message(scenario, 2), _context(worker, scenario)).content
    assert again["metrics"]["setup_seconds"] < warm["metrics"]["setup_seconds"]


@pytest.mark.slow("a fedtune worker process")
def test_a_failed_message_leaves_the_worker_serving(worker, task_identity) -> None:
    scenario = worker["scenario"]
    app = build_client_app()
    broken = _train_message(scenario)
    del broken.content["arrays"]
    with pytest.raises(ClientError, match=r"client 0, round 1: WorkerError: the node's worker"):
        app(broken, _context(worker, scenario))
    reply = app(_train_message(scenario), _context(worker, scenario))
    assert reply.content["metrics"]["num-examples"] > 0
    assert worker["proc"].poll() is None


def test_a_worker_that_is_down_is_an_error_naming_the_node(make_scenario, task_identity) -> None:
    scenario = make_scenario()
    context = _context(None, scenario, partition_id=1)
    context.node_config[WORKER_SOCKET] = "/nonexistent/fedtune.sock"
    with pytest.raises(ClientError, match=r"\[client 1, round 1: WorkerError: .* is down"):
        build_client_app()(_train_message(scenario), context)


@pytest.mark.slow("a fedtune worker process and a probe as another user")
def test_the_socket_is_owner_only_and_other_users_are_refused(worker) -> None:
    path = worker["socket"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if os.getuid() != 0:  # only root can act as another user here
        return
    probe = (
        "import os, socket, sys, time\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('no permission'); sys.exit()\n"
        "time.sleep(0.5)  # the worker refuses before reading: it has closed by now\n"
        "try:\n"
        "    s.sendall(b'x')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    pass\n"
        "print(s.recv(4096)[8:].decode())\n"
    )
    run = [sys.executable, "-c", probe, str(path)]
    os.chmod(path.parent, 0o755)
    assert subprocess.run(run, capture_output=True, text=True).stdout.strip() == "no permission"
    os.chmod(path, 0o666)  # even then, the worker checks who connects
    answer = subprocess.run(run, capture_output=True, text=True)
    assert "refused a connection from user id 65534" in answer.stdout, answer.stderr


def test_a_refused_client_hears_why_even_when_its_send_fails(monkeypatch, task_identity) -> None:
    """The worker refuses before reading, so a message bigger than the socket's buffer fails
    mid-send; the ClientApp still reports the worker's reason, not a broken pipe."""
    monkeypatch.setattr(worker_module, "peer_uid", lambda conn: 65534)
    path = Path(tempfile.mkdtemp(prefix="fedtune-test-")) / "w.sock"
    listener = listen(path)

    def refuse_one() -> None:
        conn, _ = listener.accept()
        with conn:
            worker_module._answer(conn, {}, lambda run_config: None)

    thread = threading.Thread(target=refuse_one, daemon=True)  # never holds up pytest
    thread.start()
    weights = {"w": np.zeros(4 << 20, np.float32)}  # 16 MB, far past the socket's buffer
    big = Message(RecordDict({"arrays": to_record(weights)}), dst_node_id=1, message_type="train")
    try:
        with pytest.raises(WorkerError, match="refused a connection from user id 65534"):
            worker_module.call(str(path), "train", big, node_context(2), 0.0)
    finally:
        thread.join(timeout=30)
        listener.close()


@pytest.mark.slow("two fedtune worker processes")
def test_a_second_worker_on_a_live_socket_is_refused(worker) -> None:
    with pytest.raises(WorkerSocketError, match="a worker already listens"):
        listen(worker["socket"])


@pytest.mark.slow("fedtune worker processes")
def test_a_socket_it_cannot_create_is_one_line(tmp_path: Path) -> None:
    for path in ("/proc/fedtune/w.sock", str(tmp_path / ("x" * 120) / "w.sock")):
        result = subprocess.run(
            [sys.executable, "-m", "fedtune.cli", "worker", "--socket", path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        err = result.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedtune: error: "), err
