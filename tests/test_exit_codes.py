"""The exit-code contract of every command (docs/reference/contract.md, "Exit codes"): 0
success, 1 a run that failed or an unexpected error (one line, its traceback in a file),
2 a problem the user can fix (one line `fedtune: error: ...`), 130 / 143 after SIGINT /
SIGTERM (`fedtune: interrupted`); no traceback on the terminal. `--ray-address` is checked
in seconds, before a run directory exists; numbers that set an amount of work are bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import write_scenario

import fedtune.launch.sweep
from fedtune.cli import COMMANDS, main
from fedtune.config import ScenarioError
from fedtune.errors import first_line
from fedtune.launch import ray_cluster, simulation


def _one_error_line(capfd: pytest.CaptureFixture) -> str:
    """The command's only stderr line, `fedtune: error: ...`; nothing on stdout."""
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedtune: error: "), err[-2000:]
    assert out == "" and "Traceback" not in err
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NOWHERE = "{tmp}/nowhere"
BAD_INPUT = [
    ("run", ["run", "s.yaml", "--target", "2"], "--target: must be above 0 and at most 1"),
    ("run", ["run", "s.yaml", "--ray-address", "ray://head:10001"], "give HOST:PORT"),
    ("centralized", ["centralized"], "give a SCENARIO"),
    ("local", ["local", "--output", "{tmp}/file.txt"], "give a SCENARIO"),
    ("deploy", ["deploy"], "give a SCENARIO"),
    ("sweep", ["sweep", "s.yaml", "--parallel", "65"], "--parallel: must be between 1 and 64"),
    ("sweep", ["sweep"], "give a SCENARIO"),
    ("worker", ["worker"], "the following arguments are required: --socket"),
    ("certs", ["certs", NOWHERE, "--nodes", "10001"], "must be between 0 and 10000"),
    ("shards", ["shards", "quickstart"], "the following arguments are required: out_dir"),
    ("report", ["report", NOWHERE], "no such directory"),
    ("compare", ["compare", "{tmp}/file.txt"], "a file, not a run directory"),
    ("audit", ["audit", NOWHERE], "not a fedtune run (no scenario.json)"),
    (
        "audit",
        ["audit", NOWHERE, "--inversion-steps", "10001"],
        "--inversion-steps: must be between 0 and 10000, not 10001",
    ),
    (
        "audit",
        ["audit", NOWHERE, "--max-examples", "100001"],
        "--max-examples: must be between 1 and 100000",
    ),
    ("audit", ["audit", NOWHERE, "--batches", "1001"], "--batches: must be between 1 and 1000"),
    ("audit", ["audit", NOWHERE, "--batch-size", "257"], "--batch-size: must be between 1 and"),
    (
        "audit",
        ["audit", NOWHERE, "--inversion-steps", "9" * 5000],
        "--inversion-steps: not an integer: '99999",
    ),
    ("predict", ["predict", NOWHERE], "give texts as arguments or --file FILE"),
    ("export", ["export", NOWHERE, "{tmp}/out", "--quantize", "fp4"], "invalid choice: 'fp4'"),
    ("serve", ["serve", NOWHERE, "--workers", "65"], "--workers: must be between 1 and 64"),
    ("serve", ["serve", NOWHERE, "--port", "0"], "not a TCP port"),
    (None, [], "the following arguments are required: command"),
    (None, ["fly"], "invalid choice: 'fly'"),
]
"""(command, arguments, message) rows, at least one per command: each exits 2."""


def test_the_table_covers_every_command() -> None:
    assert {command for command, _, _ in BAD_INPUT} == {*COMMANDS, None}


@pytest.mark.parametrize(("command", "argv", "message"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line(
    command: str | None,
    argv: list[str],
    message: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    (tmp_path / "file.txt").write_text("hello\n")
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    line = _one_error_line(capfd)
    assert message in line and len(line) < 400, line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_0(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0 and "usage: fedtune" in capsys.readouterr().out


def test_an_audit_of_a_run_with_a_huge_batch_size_needs_batch_size(
    make_scenario, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The parser bounds --batch-size; its default, the run's own, is bounded too."""
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "config.json").write_text("{}")
    scenario = make_scenario(training={"batch_size": 5000}).model_dump(mode="json")
    (run_dir / "scenario.json").write_text(json.dumps(scenario))
    assert main(["audit", str(run_dir)]) == 2
    line = _one_error_line(capfd)
    assert "batch size 5000 is above the 256 texts one attacked update may hold" in line


# ------------------------------------------------------------------ --ray-address


@pytest.fixture
def silent_server() -> Iterator[str]:
    """HOST:PORT where TCP connects but nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _grpc_server(handlers: list[grpc.GenericRpcHandler]) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def other_grpc_server() -> Iterator[str]:
    """A gRPC server without Ray's services (as a proxy or another service answers)."""
    yield from _grpc_server([])


@pytest.fixture
def fake_gcs() -> Iterator[str]:
    """A gRPC server that answers Ray's GetClusterId as a GCS does."""
    method = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    yield from _grpc_server(
        [
            grpc.method_handlers_generic_handler(
                "ray.rpc.NodeInfoGcsService", {"GetClusterId": method}
            )
        ]
    )


@pytest.fixture
def never_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run must not get as far as its inputs, its run directory or a sweep."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started despite an unusable --ray-address")

    monkeypatch.setattr(simulation, "check_inputs", never)
    monkeypatch.setattr(fedtune.launch.sweep, "run_sweep", never)
    monkeypatch.setattr(ray_cluster, "RAY_CHECK_SECONDS", 1.0)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (None, "no Ray cluster answers there (Connection refused)"),
        (
            "silent_server",
            "something answers there, but not a Ray cluster's head (DEADLINE_EXCEEDED)",
        ),
        (
            "other_grpc_server",
            "something answers there, but not a Ray cluster's head (UNIMPLEMENTED)",
        ),
    ],
)
def test_an_unusable_ray_address_is_one_line_in_seconds_and_leaves_nothing(
    server: str | None,
    message: str,
    make_scenario,
    tmp_path: Path,
    never_started: None,
    capfd: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    address = request.getfixturevalue(server) if server else f"127.0.0.1:{_free_port()}"
    path = write_scenario(make_scenario(), tmp_path / "s.yaml")
    for argv, out in (
        (["run", str(path), "--quiet"], tmp_path / "run"),
        (["sweep", str(path), "--grid", "seed=1,2", "--quiet"], tmp_path / "sweep"),
    ):
        start = time.monotonic()
        assert main([*argv, "--ray-address", address, "--output", str(out)]) == 2
        assert time.monotonic() - start < 10
        assert f"--ray-address {address}: {message}" in _one_error_line(capfd)
        assert not out.exists()


def test_a_ray_cluster_that_answers_passes_the_check(
    fake_gcs: str, make_scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    def reached(*args: object) -> None:
        raise ScenarioError("reached the run's inputs")

    monkeypatch.setattr(simulation, "check_inputs", reached)
    path = write_scenario(make_scenario(), tmp_path / "s.yaml")
    assert main(["run", str(path), "--quiet", "--ray-address", fake_gcs]) == 2
    assert _one_error_line(capfd) == "fedtune: error: reached the run's inputs"


# ------------------------------------------------------------------ unexpected errors


def test_a_quoted_traceback_stays_out_of_the_one_line() -> None:
    """Ray's "Failed to connect to GCS" quotes a traceback in its first line."""
    exc = RuntimeError(
        "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
        '  File "ray/_private/gcs_utils.py", line 1, in connect'
    )
    assert first_line(exc) == "Failed to connect to GCS. Last connection error"
    assert first_line(RuntimeError("Traceback (most recent call last):")) == "RuntimeError"


def _crash(args: object) -> int:
    raise RuntimeError("kaboom\nsecond line")


def test_an_unexpected_error_is_one_line_exit_1_with_its_traceback_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(COMMANDS, "report", _crash)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv("FEDTUNE_DEBUG", raising=False)
    assert main(["report", "x"]) == 1
    line = _one_error_line(capfd)
    (saved,) = tmp_path.glob("fedtune-traceback-*.txt")
    assert line == (
        f"fedtune: error: unexpected RuntimeError: kaboom (traceback in {saved}; please report it)"
    )
    text = saved.read_text()
    assert text.startswith("Traceback (most recent call last)") and "in _crash" in text


def test_fedtune_debug_prints_the_traceback_and_keeps_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(COMMANDS, "report", _crash)
    monkeypatch.setenv("FEDTUNE_DEBUG", "1")
    assert main(["report", "x"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and "RuntimeError: kaboom" in err
    assert err[-1] == "fedtune: error: unexpected RuntimeError: kaboom (traceback above)"
    assert main(["audit", str(tmp_path / "nowhere")]) == 2  # a user's error: trace and line
    err = capfd.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback") and err[-1].startswith("fedtune: error: ")


# ------------------------------------------------------------------ SIGINT and SIGTERM

VALID_ARGV = {
    "run": ["s.yaml"],
    "centralized": ["s.yaml"],
    "local": ["s.yaml"],
    "deploy": ["s.yaml"],
    "sweep": ["s.yaml"],
    "worker": ["--socket", "w.sock"],
    "certs": ["certs"],
    "shards": ["s.yaml", "shards"],
    "report": ["run"],
    "compare": ["run"],
    "audit": ["run"],
    "predict": ["model", "hi"],
    "export": ["model", "out", "--quantize", "int8"],
    "serve": ["model"],
}
"""Arguments each command's parser accepts (the handler is replaced: nothing runs)."""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_every_command_ends_on_a_signal_with_its_exit_code(
    signum: int, code: int, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    def wait_for_the_signal(args: object) -> int:
        os.kill(os.getpid(), signum)
        time.sleep(10)
        raise AssertionError("no signal arrived")

    assert set(VALID_ARGV) == set(COMMANDS)
    sigterm = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for command, argv in VALID_ARGV.items():
            monkeypatch.setitem(COMMANDS, command, wait_for_the_signal)
            assert main([command, *argv]) == code, command
            out, err = capfd.readouterr()
            assert err == "fedtune: interrupted\n", (command, err)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) == sigterm, "main put SIGTERM's handler back"


@pytest.mark.slow("a fedtune centralized process, stopped by a signal")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_long_command_stops_on_one_signal(
    signum: int, code: int, make_scenario, tmp_path: Path
) -> None:
    """The real command, training: one signal, one line, no traceback, 130 / 143."""
    scenario = make_scenario(
        federation={"rounds": 200},
        training={"local_epochs": 5},
        output={"dir": str(tmp_path / "run"), "tensorboard": False},
    )
    path = write_scenario(scenario, tmp_path / "s.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "centralized", "--quiet", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().strip():  # round 0 evaluated: training
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signum)
    timer = threading.Timer(180, os.killpg, (proc.pid, signal.SIGKILL))  # a loaded CI machine
    timer.start()
    try:
        out, err = proc.communicate()
    finally:
        timer.cancel()
    assert proc.returncode == code, err[-3000:]
    assert err.strip().splitlines() == ["fedtune: interrupted"], err[-3000:]
