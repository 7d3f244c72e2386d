"""The `fedtune` command: one dispatch table, output directories checked before anything
starts, a run that aggregated nothing fails, and Ctrl-C / SIGTERM stop a simulation at once
with nothing left running and the last complete round resumable."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import fedtune, write_scenario

from fedtune import cli
from fedtune.cli import COMMANDS, main
from fedtune.federation.server.checkpoint import load_checkpoint
from fedtune.launch import baselines, deploy, simulation, teardown


def test_every_command_has_one_handler() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(COMMANDS) == set(commands)
    assert all(callable(handler) for handler in COMMANDS.values())


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedtune: error: "), err
    return err[0]


def test_output_dirs_are_checked_before_anything_starts(
    make_scenario, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory of the user's files, a file, or a directory that holds a run is refused by
    run, centralized and deploy before data, models or Ray are touched; nothing is written."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("started despite a bad output directory")

    for target, name in (
        (simulation, "run_federated"),
        (baselines, "run_centralized"),
        (simulation, "check_inputs"),
        (deploy, "deploy"),
    ):
        monkeypatch.setattr(target, name, never)
    path = write_scenario(make_scenario(), tmp_path / "s.yaml")
    user = tmp_path / "user"
    (user / "model").mkdir(parents=True)
    (user / "model" / "my_weights.bin").write_bytes(b"weights")
    (user / "notes.txt").write_text("notes")
    (tmp_path / "file.txt").write_text("mine")
    held = tmp_path / "held"
    held.mkdir()
    (held / "scenario.json").write_text("{}")  # an interrupted run
    cases = {
        str(user): "is not empty and not a fedtune run directory",
        str(tmp_path / "file.txt"): "is a file, not a directory",
        str(held): "already holds a run (continue it with fedtune run --resume",
    }
    for command in ("run", "centralized", "deploy"):
        for output, message in cases.items():
            assert main([command, str(path), "--quiet", "--output", output]) == 2
            assert message in _one_error_line(capsys), (command, output)
    assert sorted(p.name for p in user.rglob("*")) == ["model", "my_weights.bin", "notes.txt"]
    assert (user / "model" / "my_weights.bin").read_bytes() == b"weights"
    assert (tmp_path / "file.txt").read_text() == "mine"
    assert sorted(p.name for p in held.iterdir()) == ["scenario.json"]


def test_a_run_that_aggregated_nothing_exits_1(
    make_scenario, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = make_scenario()
    path = write_scenario(scenario, tmp_path / "s.yaml")
    summary = {
        "mode": "federated",
        "scenario": "tiny",
        "rounds_completed": 2,
        "rounds_aggregated": 0,
        "final": {"accuracy": 0.3, "macro_f1": 0.1},
        "run_dir": str(tmp_path / "run"),
    }
    monkeypatch.setattr(simulation, "run_federated", lambda *args: summary)
    assert main(["run", str(path), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "fedtune: error: no round aggregated any update (every client failed or was "
        f"rejected); see {tmp_path / 'run' / 'run.log'}"
    ]
    assert captured.out == ""
    one_round = {**summary, "rounds_aggregated": 1}
    monkeypatch.setattr(simulation, "run_federated", lambda *args: one_round)
    assert main(["run", str(path), "--quiet"]) == 0
    assert "federated run of 'tiny': 2 rounds" in capsys.readouterr().out


@pytest.mark.slow("a Ray simulation process")
def test_a_run_whose_clients_all_fail_exits_1(make_scenario, tmp_path: Path) -> None:
    """The real simulation: every client crashes every round, so nothing is aggregated."""
    scenario = make_scenario(federation={"rounds": 1}, faults={"crash": 1.0})
    result = fedtune("run", "--quiet", str(write_scenario(scenario, tmp_path / "s.yaml")))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fedtune: error: no round aggregated any update"), last
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ Ctrl-C and SIGTERM

ROUNDS = 5
RAY_LATEST_SESSION = Path("/tmp/ray/session_latest")  # where Ray links its newest cluster


def _descendants(pid: int) -> dict[psutil.Process, str]:
    """The processes below `pid`, with their names (read while they are alive)."""
    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                found[process] = process.name()
    return found


def _interrupt(make_scenario, tmp_path: Path, signum: int, whole_group: bool) -> tuple:
    """Start `fedtune run` of a tiny ROUNDS-round scenario, send `signum` once round 1 is
    checkpointed; return (result, seconds to exit, run dir, processes it had started)."""
    scenario = make_scenario(
        federation={"rounds": ROUNDS},
        training={"local_epochs": 2},
        output={"dir": str(tmp_path / "run"), "tensorboard": False},
    )
    path = write_scenario(scenario, tmp_path / "s.yaml")
    run_dir = Path(scenario.output.dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtune.cli", "run", "--quiet", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    started: dict[psutil.Process, str] = {}
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        started |= _descendants(proc.pid)
        checkpointed = (run_dir / "checkpoint").is_dir() and metrics.exists()
        if checkpointed and len(metrics.read_text().splitlines()) >= 2:  # rounds 0 and 1
            break
        time.sleep(0.05)
    started |= _descendants(proc.pid)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert "raylet" in started.values(), sorted(started.values())
    session = RAY_LATEST_SESSION.resolve()
    sent = time.monotonic()
    if whole_group:
        os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does
    else:
        os.kill(proc.pid, signum)  # `kill PID`, a process manager's stop
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("fedtune run did not stop within 20 s of one signal")
    seconds = time.monotonic() - sent
    time.sleep(0.5)
    left = []
    for process in started:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {started[process]}")
        except psutil.NoSuchProcess:
            pass
    for process in started:  # never leave them to the next test
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert not left, f"processes left running: {left}; exit {proc.returncode}: {err[-2000:]}"
    assert RAY_LATEST_SESSION.resolve() == session, "a second Ray cluster started in the stop"
    return proc.returncode, out, err, seconds, run_dir


@pytest.mark.slow("interrupts a Ray simulation process and resumes it")
def test_one_ctrl_c_stops_the_run_and_it_resumes(make_scenario, tmp_path: Path) -> None:
    code, out, err, seconds, run_dir = _interrupt(make_scenario, tmp_path, signal.SIGINT, True)
    assert code == 130, err[-3000:]
    assert seconds < 20
    assert err.strip().splitlines() == [
        f"fedtune: interrupted; resume with fedtune run --resume {run_dir}"
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 1 <= summary["rounds_completed"] < ROUNDS
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:  # no round recorded the clients the signal killed
        assert line["failures"]["train"]["errors"] == 0, line["failures"]
    resumed = fedtune("run", "--quiet", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [h["round"] for h in summary["history"]] == list(range(ROUNDS + 1))


class DriverExited(Exception):
    """Raised where Ray's driver would exit: its raylet has just died."""


@pytest.mark.slow("starts and stops a Ray cluster")
def test_the_stop_kills_children_before_their_parents(monkeypatch) -> None:
    """Ray's driver exits the moment its raylet dies, so the stop kills the raylet's own
    children (Ray's agents) before the raylet."""
    from ray._private import auto_init_hook

    raylet = subprocess.Popen([sys.executable, "-c", RAYLET], stdout=subprocess.PIPE, text=True)
    agent = psutil.Process(int(raylet.stdout.readline()))
    tree = [d for d in teardown.process_tree() if d[0] in (raylet.pid, agent.pid)]
    kill = os.kill

    def kill_and_exit_with_the_raylet(pid: int, signum: int) -> None:
        kill(pid, signum)
        if pid == raylet.pid:
            raise DriverExited  # the worst case of the race: no kill after this one

    monkeypatch.setattr(auto_init_hook, "enable_auto_connect", auto_init_hook.enable_auto_connect)
    monkeypatch.setattr(os, "kill", kill_and_exit_with_the_raylet)
    with contextlib.suppress(DriverExited):
        teardown.stop_ray(tree)
    monkeypatch.undo()
    try:
        deadline = time.monotonic() + 5
        with contextlib.suppress(psutil.NoSuchProcess):
            while agent.is_running() and agent.status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, "the raylet's child outlived the stop"
                time.sleep(0.05)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            agent.kill()
        raylet.kill()
        raylet.wait()


RAYLET = """
import subprocess, sys
agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(agent.pid, flush=True)
agent.wait()
"""


@pytest.mark.slow("stops a Ray simulation process")
def test_one_sigterm_stops_the_run_resumably(make_scenario, tmp_path: Path) -> None:
    code, out, err, seconds, run_dir = _interrupt(make_scenario, tmp_path, signal.SIGTERM, False)
    assert code == 143, err[-3000:]
    assert seconds < 20
    assert err.strip().splitlines() == [
        f"fedtune: interrupted; resume with fedtune run --resume {run_dir}"
    ], "one line: no C++ stack dump from Ray's crash handler"
    checkpoint = load_checkpoint(run_dir)
    assert 1 <= checkpoint.server_round < ROUNDS
