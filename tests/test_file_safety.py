"""Files fedtune writes (issue 26, class 2): created without following links, inside the
directory it was given, private keys 0600 from the start; nothing it did not create is
deleted or replaced; a run directory is written by one process at a time; every refusal is
one line before anything starts."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_scenario

from fedtune.cli import main
from fedtune.config import ScenarioError
from fedtune.federation.client.worker import WorkerSocketError, listen
from fedtune.launch import baselines, deploy, simulation, sweep
from fedtune.launch.certs import make_certs
from fedtune.launch.deploy import write_node_files
from fedtune.runs.directory import check_output_dir, lock_dir
from fedtune.runs.recorder import RunRecorder


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedtune: error: "), err
    return err[0]


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("started despite a refused directory")


# ------------------------------------------------------------------ certs


@pytest.mark.parametrize("live", [False, True], ids=["dangling", "live"])
def test_certs_never_write_through_a_link_planted_at_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, live: bool
) -> None:
    out, outside = tmp_path / "certs", tmp_path / "outside.key"
    out.mkdir()
    if live:
        outside.write_text("the user's")
    (out / "ca.key").symlink_to(outside)
    assert main(["certs", str(out), "--nodes", "1"]) == 2
    assert "already holds ca.key" in _one_error_line(capsys)
    with pytest.raises(FileExistsError):  # the same without the command's check (a race)
        make_certs(out, 1)
    assert (out / "ca.key").is_symlink()
    assert outside.read_text() == "the user's" if live else not outside.exists()


@pytest.mark.parametrize("live", [False, True], ids=["dangling", "live"])
def test_certs_refuse_a_link_as_their_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture, live: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    if live:
        elsewhere.mkdir()
    (tmp_path / "certs").symlink_to(elsewhere)
    assert main(["certs", str(tmp_path / "certs")]) == 2
    assert "a symbolic link" in _one_error_line(capsys)
    assert not live or not any(elsewhere.iterdir())


def test_private_keys_are_created_0600_without_following_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: dict[str, tuple[int, int]] = {}
    real_open = os.open

    def spy(path: str | os.PathLike, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        opened[Path(path).name] = (flags, mode)
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # a key must not depend on the umask to be private
    try:
        make_certs(tmp_path / "certs", 1)
    finally:
        os.umask(old_umask)
    for name in ("ca.key", "server.key", "superexec.secret", "node-0"):
        flags, mode = opened[name]
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW, name
        assert mode == 0o600, name
        assert stat.S_IMODE((tmp_path / "certs" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "certs" / "ca.crt").stat().st_mode) == 0o644


# ------------------------------------------------------------------ shards


@pytest.fixture
def scenario_file(make_scenario, tmp_path: Path) -> Path:
    return write_scenario(make_scenario(), tmp_path / "tiny.yaml")


@pytest.mark.parametrize("live", [False, True], ids=["dangling", "live"])
def test_shards_never_write_through_a_link_planted_at_a_shard(
    make_scenario, scenario_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, live: bool
) -> None:
    out, outside = tmp_path / "nodes", tmp_path / "outside.jsonl"
    (out / "node-1").mkdir(parents=True)
    if live:
        outside.write_text("the user's")
    (out / "node-1" / "data.jsonl").symlink_to(outside)
    assert main(["shards", str(scenario_file), str(out)]) == 2
    assert "node-1/data.jsonl: already exists" in _one_error_line(capsys)
    with pytest.raises(FileExistsError):  # the same without the command's check (a race)
        write_node_files(make_scenario(), out)
    assert outside.read_text() == "the user's" if live else not outside.exists()


@pytest.mark.parametrize("where", ["nodes", "nodes/node-0"])
def test_shards_refuse_a_link_as_a_folder(
    make_scenario,
    scenario_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    where: str,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).symlink_to(elsewhere)
    assert main(["shards", str(scenario_file), str(tmp_path / "nodes")]) == 2
    _one_error_line(capsys)
    if where != "nodes":
        with pytest.raises(NotADirectoryError):  # without the command's check
            write_node_files(make_scenario(), tmp_path / "nodes")
    assert not any(elsewhere.iterdir())


# ------------------------------------------------------------------ the worker's socket


def _listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def test_a_socket_path_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    mine, target = tmp_path / "notes.txt", tmp_path / "target.txt"
    mine.write_text("the user's")
    target.write_text("the user's")
    (tmp_path / "live-link").symlink_to(target)
    (tmp_path / "dangling-link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    for name in ("notes.txt", "live-link", "dangling-link", "folder"):
        with pytest.raises(WorkerSocketError, match="exists and is not a socket"):
            listen(tmp_path / name)
        assert os.path.lexists(tmp_path / name), name
    assert mine.read_text() == target.read_text() == "the user's"


def test_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    with _listening(tmp_path / "live.sock"):
        with pytest.raises(WorkerSocketError, match="a worker already listens"):
            listen(tmp_path / "live.sock")
        assert stat.S_ISSOCK((tmp_path / "live.sock").lstat().st_mode)
    _listening(tmp_path / "stale.sock").close()  # its process died: the file stays
    with listen(tmp_path / "stale.sock") as sock:
        assert sock.getsockname() == str(tmp_path / "stale.sock")


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_another_users_socket_is_refused(tmp_path: Path) -> None:
    _listening(tmp_path / "theirs.sock").close()
    os.chown(tmp_path / "theirs.sock", 65534, 65534)
    with pytest.raises(WorkerSocketError, match="another user's socket"):
        listen(tmp_path / "theirs.sock")
    assert (tmp_path / "theirs.sock").exists()


@pytest.mark.parametrize(("path", "error"), [("", "it is empty"), ("notes.txt", "is not a socket")])
def test_worker_socket_refusals_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    error: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket.socket, "listen", _never)
    (tmp_path / "notes.txt").write_text("the user's")
    assert main(["worker", "--socket", path]) == 2
    assert error in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "the user's"


# ------------------------------------------------------------------ output directories


@pytest.mark.parametrize("live", [False, True], ids=["dangling", "live"])
@pytest.mark.parametrize("command", ["run", "centralized", "local", "deploy"])
def test_a_link_as_the_output_is_refused(
    scenario_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    live: bool,
) -> None:
    for target, name in (
        (simulation, "run_federated"),
        (baselines, "run_centralized"),
        (baselines, "run_local_only"),
        (deploy, "deploy"),
    ):
        monkeypatch.setattr(target, name, _never)
    elsewhere = tmp_path / "elsewhere"
    if live:
        elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    assert main([command, str(scenario_file), "--quiet", "--output", str(tmp_path / "out")]) == 2
    assert "is a symbolic link" in _one_error_line(capsys)
    assert not live or not any(elsewhere.iterdir())


def test_run_log_is_not_written_through_a_link(make_scenario, tmp_path: Path) -> None:
    """A resumed run appends to run.log: a link planted there is not followed."""
    run_dir, outside = tmp_path / "run", tmp_path / "outside.log"
    run_dir.mkdir()
    (run_dir / "run.log").symlink_to(outside)
    with pytest.raises(OSError):
        RunRecorder(run_dir, make_scenario(), "federated", 2)
    assert not outside.exists()


def test_the_output_check_probes_instead_of_trusting_the_mode_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    for path in ("/proc/fedtune-run", "/proc/fedtune/run"):
        with pytest.raises(ScenarioError, match="cannot be created"):
            check_output_dir(path, key="--output")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    check_output_dir(tmp_path / "new" / "run")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty"]  # no probe left behind


# ------------------------------------------------------------------ one process per run directory

HOLD = """
import fcntl, os, sys
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
print("held", flush=True)
sys.stdin.read()
"""
"""Another process holding a directory's lock (as a running fedtune does)."""


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`tmp_path / "run"`, held by another live process, and that process's pid."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    yield run_dir, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_second_run_into_a_held_directory_is_one_line(
    held: tuple[Path, int],
    scenario_file: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir, pid = held
    monkeypatch.setattr(simulation, "run_federated", _never)
    assert main(["run", str(scenario_file), "--quiet", "--output", str(run_dir)]) == 2
    line = _one_error_line(capsys)
    assert str(run_dir) in line and f"in use by process {pid}" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


@pytest.mark.parametrize(
    ("start", "resume"),
    [
        (simulation.run_federated, False),
        (simulation.run_federated, True),
        (baselines.run_centralized, False),
        (baselines.run_local_only, False),
        (deploy.deploy, False),
    ],
    ids=["run", "run-resume", "centralized", "local", "deploy"],
)
def test_a_run_that_started_meanwhile_holds_the_directory(
    held: tuple[Path, int],
    make_scenario,
    monkeypatch: pytest.MonkeyPatch,
    start,
    resume: bool,
) -> None:
    """Both passed `fedtune`'s first check at once: the second to claim the directory is
    refused before it writes there, or Ray or a model starts (a resumed run too)."""
    run_dir, pid = held
    for module in (simulation, baselines, deploy):
        monkeypatch.setattr(module, "check_inputs", lambda scenario: None)
    monkeypatch.setattr(simulation, "check_resources", lambda scenario: None)
    monkeypatch.setattr(simulation, "load_checkpoint", lambda *args: None)  # only reads
    for module, name in (
        (simulation, "build_server_app"),
        (baselines, "seed_everything"),
        (deploy, "Launcher"),
    ):
        monkeypatch.setattr(module, name, _never)  # what each does once it holds the directory
    scenario = make_scenario(output={"dir": str(run_dir)})
    with pytest.raises(ScenarioError, match=f"in use by process {pid}"):
        start(scenario, **({"resume": True} if resume else {}))
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_a_stale_lock_of_a_dead_process_is_taken_over(make_scenario, tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(dead.stdout)  # a run killed before its scenario.json
    scenario = make_scenario(output={"dir": str(run_dir)})
    assert simulation.prepare_run_dir(scenario, "") == run_dir
    assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_held_sweep_directory_is_refused_and_its_runs_kept(
    held: tuple[Path, int], scenario_file: Path
) -> None:
    run_dir, pid = held
    plan = sweep.SweepPlan(str(scenario_file), sweep.parse_grid(["training.lr=1e-3"]), [], False)
    plan.plan_runs()
    with pytest.raises(ScenarioError, match=f"in use by process {pid}"):
        sweep.run_sweep(plan, run_dir, quiet=True, launch=_never)
    # a run directory of the sweep's that a live process still writes into is not cleared
    sweep_dir = run_dir.parent
    plan.runs[0].name = run_dir.name
    with pytest.raises(ScenarioError, match=f"process {pid} still runs there"):
        sweep.run_sweep(plan, sweep_dir, quiet=True, launch=_never)
    assert (run_dir / ".lock").is_file()


def test_a_fifo_planted_as_the_lock_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Found in review: opening a FIFO at `.lock` for writing blocked until a reader came."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / ".lock")
    with pytest.raises(ScenarioError, match="output.dir"):
        lock_dir(run_dir)
    assert stat.S_ISFIFO((run_dir / ".lock").lstat().st_mode)  # left as it was
