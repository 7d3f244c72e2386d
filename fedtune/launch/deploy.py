"""`fedtune deploy`: the app on Flower's Deployment Engine, every part a separate OS process.

One SuperLink, one SuperNode per client (each with its own working directory, its own data
file written from the scenario's partition, its own cache and its own key), the run
submitted with `flwr run . CONNECTION --stream`. TLS and SuperNode authentication are on
unless `insecure`. Every process started here runs in its own process group and is stopped
when the run ends, fails or is interrupted. Outputs are those of `fedtune run`.

Layout under the run directory: `deploy/` (scenario.yaml, run_config.toml, certs/,
flwr-home/config.toml, superlink/ with its state and log, flwr-run.log) and
`nodes/node-<i>/` (data.jsonl, cache/, flwr-home/, supernode.log; with `worker`,
worker.log, its socket in a private temporary directory).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import tomli_w
import yaml

from fedtune.atomic import create_file, make_dir
from fedtune.config import Scenario, ScenarioError
from fedtune.data.corpus import LABEL, TEXT, federated_data
from fedtune.errors import FedtuneError
from fedtune.federation.client.worker import WORKER_SOCKET
from fedtune.launch.certs import make_certs
from fedtune.launch.simulation import check_inputs, prepare_run_dir

CONNECTION = "fedtune"
"""The SuperLink connection name in the launcher's `$FLWR_HOME/config.toml`."""
APP_DIR = Path(__file__).resolve().parents[2]


class DeployError(FedtuneError, RuntimeError):
    """A deployment process failed; the message names it and quotes its log."""

    exit_code = 1


@dataclass(frozen=True)
class Host:
    """Where a process runs: a command prefix (e.g. `ip netns exec NS`) and the address
    it is reached at (the SuperLink's) or binds to."""

    address: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Processes started in their own process groups; on exit (normal, error, Ctrl-C)
    each group gets SIGTERM, then SIGKILL after `grace` seconds."""

    def __init__(self, env: dict[str, str], grace: float = 10.0) -> None:
        self.env = env
        self.grace = grace
        self.started: list[tuple[str, subprocess.Popen, Path]] = []
        self._logs: list[IO] = []

    def start(
        self, name: str, cmd: Sequence[str], log: Path, cwd: Path, env: dict | None = None
    ) -> subprocess.Popen:
        handle = log.open("ab")
        self._logs.append(handle)
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env={**self.env, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append((name, proc, log))
        return proc

    def check(self) -> None:
        """Raise DeployError if a process has exited."""
        for name, proc, log in self.started:
            if proc.poll() is not None:
                raise DeployError(f"{name} exited with code {proc.returncode}:\n{tail(log)}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc, _ in reversed(self.started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + self.grace
            for _, proc, _ in self.started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if all(proc.poll() is not None for _, proc, _ in self.started):
                break
        for handle in self._logs:
            handle.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the launcher like Ctrl-C, so its processes are stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_node_files(scenario: Scenario, nodes_dir: Path) -> list[Path]:
    """Each client's shard (the scenario's partition, before its local split) as
    nodes/node-<i>/data.jsonl, with the scenario's column names and label names (and its
    tabular columns; a missing number as null). Each file is new: one already there, or a
    link in place of a file or a folder, is an OSError (nothing is written through it)."""
    fed = federated_data(scenario)
    text, label = scenario.data.text_column, scenario.data.label_column
    tabular = scenario.data.tabular.columns if scenario.data.tabular else ()
    paths = []
    for pid in range(scenario.partition.num_clients):
        shard = fed.partition(pid)
        path = nodes_dir / f"node-{pid}" / "data.jsonl"
        make_dir(path.parent)
        rows = (
            json.dumps(
                {
                    text: row[TEXT],
                    label: fed.label_names[row[LABEL]],
                    **{c: _json_value(row[c]) for c in tabular},
                },
                ensure_ascii=False,
            )
            for row in shard.select_columns([TEXT, LABEL, *tabular])
        )
        create_file(path, ("\n".join(rows) + "\n").encode("utf-8"))
        paths.append(path)
    return paths


def _json_value(value: object) -> object:
    """A cell for JSON: NaN (a missing number) as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def absolute_paths(scenario: Scenario, run_dir: Path) -> Scenario:
    """The scenario with output.dir, and model/data paths that exist, made absolute: the
    ServerApp and ClientApps run in other working directories."""
    update: dict = {"output": {**scenario.output.model_dump(), "dir": str(run_dir)}}
    for section, key in (("model", "name"), ("data", "source")):
        values = getattr(scenario, section).model_dump()
        if Path(values[key]).exists():
            update[section] = {**values, key: str(Path(values[key]).resolve())}
    return Scenario.model_validate({**scenario.model_dump(), **update})


def node_config(values: dict[str, str | int]) -> str:
    """`--node-config` text: strings quoted, as Flower requires."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


@dataclass
class Launcher:
    """The files and commands of one local deployment."""

    scenario: Scenario
    run_dir: Path
    insecure: bool
    superlink: Host
    nodes: list[Host]

    def __post_init__(self) -> None:
        self.deploy_dir = self.run_dir / "deploy"
        self.certs = self.deploy_dir / "certs"
        self.port = free_port()
        self.address = f"{self.superlink.address}:{self.port}"
        bin_dir = str(Path(sys.executable).parent)  # flower-* and flwr of this environment
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.deploy_dir / "flwr-home"),
            "PYTHONUNBUFFERED": "1",
        }

    def tls(self, flag: str) -> list[str]:
        return ["--insecure"] if self.insecure else [flag, str(self.certs / "ca.crt")]

    def prepare(self) -> list[Path]:
        """Scenario, run config, CLI connection, certificates and node data files."""
        self.deploy_dir.mkdir(parents=True, exist_ok=True)
        scenario_file = self.deploy_dir / "scenario.yaml"
        scenario_file.write_text(yaml.safe_dump(self.scenario.model_dump(mode="json")))
        run_config = {"scenario": str(scenario_file), "set": ""}
        (self.deploy_dir / "run_config.toml").write_text(tomli_w.dumps(run_config))
        connection: dict = {"address": self.address}
        if self.insecure:
            connection["insecure"] = True
        else:
            make_certs(self.certs, len(self.nodes), (self.superlink.address,))
            connection["root-certificates"] = str(self.certs / "ca.crt")
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
        (home / "config.toml").write_text(tomli_w.dumps(config))
        return write_node_files(self.scenario, self.run_dir / "nodes")

    def superlink_cmd(self) -> list[str]:
        cmd = [*self.superlink.prefix, "flower-superlink"]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.certs / "ca.crt")]
            cmd += ["--ssl-certfile", str(self.certs / "server.pem")]
            cmd += ["--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth"]
        return [
            *cmd,
            *("--host", self.superlink.address, "--port", str(self.port)),
            *("--database", str(self.deploy_dir / "superlink" / "state.db")),
            "--disable-runtime-dependency-installation",
        ]

    def supernode_cmd(
        self, pid: int, data_path: Path, key: Path | None, worker: Path | None
    ) -> list[str]:
        node_dir = data_path.parent
        config = {
            "data-path": str(data_path),
            "cache-dir": str(node_dir / "cache"),
            "partition-id": pid,
            "num-partitions": len(self.nodes),
        }
        if worker is not None:
            config[WORKER_SOCKET] = str(worker)
        cmd = [*self.nodes[pid].prefix, "flower-supernode", "--superlink", self.address]
        cmd += self.tls("--root-certificates")
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        return [
            *cmd,
            *("--node-config", node_config(config)),
            *("--host", "127.0.0.1", "--port", str(free_port())),
        ]

    def worker_cmd(self, pid: int, socket_path: Path) -> list[str]:
        return [*self.nodes[pid].prefix, "fedtune", "worker", "--socket", str(socket_path)]

    def control(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `flwr` command against the SuperLink (from the SuperLink's host)."""
        return subprocess.run(
            [*self.superlink.prefix, "flwr", *args],
            env=self.env,
            cwd=APP_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def wait_until(what: str, ready: callable, procs: Processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        procs.check()
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def online_nodes(launcher: Launcher) -> int:
    result = launcher.control("supernode", "list", CONNECTION, "--format", "json")
    try:
        nodes = json.loads(result.stdout)["nodes"]
    except (json.JSONDecodeError, KeyError):
        return 0
    return sum(1 for n in nodes if n.get("status") == "online")


def stream(run: subprocess.Popen, log: Path, quiet: bool, procs: Processes) -> None:
    """Copy the run's streamed log to `log` (and the terminal) until the run ends; fail
    fast if the SuperLink or a SuperNode dies meanwhile."""

    def copy() -> None:
        with log.open("w", encoding="utf-8") as out:
            for line in run.stdout:
                out.write(line)
                out.flush()
                if not quiet:
                    print(line, end="", flush=True)

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    while run.poll() is None:
        procs.check()
        time.sleep(0.5)
    reader.join(timeout=10)


def start_worker(
    launcher: Launcher, procs: Processes, pid: int, socket_path: Path, timeout: float
) -> None:
    """Node `pid`'s warm worker, listening on `socket_path` before its SuperNode starts."""
    node_dir = launcher.run_dir / "nodes" / f"node-{pid}"
    log, home = node_dir / "worker.log", {"FLWR_HOME": str(node_dir / "flwr-home")}
    procs.start(f"worker {pid}", launcher.worker_cmd(pid, socket_path), log, node_dir, home)
    wait_until(
        f"worker {pid}",
        lambda: "listening on" in log.read_text(errors="replace"),
        procs,
        timeout,
    )


@contextlib.contextmanager
def _removed(directory: Path | None) -> Iterator[None]:
    """`directory` (if any) is removed on exit."""
    try:
        yield
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def deploy(
    scenario: Scenario,
    insecure: bool = False,
    quiet: bool = False,
    superlink: Host | None = None,
    nodes: list[Host] | None = None,
    timeout: float = 120.0,
    worker: bool = False,
) -> dict:
    """Run the scenario on a local deployment: a SuperLink and one SuperNode per client
    (with `worker`, a warm `fedtune worker` next to each), each a separate process (on
    `nodes` hosts, if given); return the run's summary."""
    check_inputs(scenario)
    if not (APP_DIR / "pyproject.toml").is_file():
        raise ScenarioError(f"fedtune deploy needs the fedtune source tree ({APP_DIR})")
    run_dir = prepare_run_dir(scenario, "deploy").resolve()
    scenario = absolute_paths(scenario, run_dir)
    n = scenario.partition.num_clients
    nodes = nodes or [Host() for _ in range(n)]
    if len(nodes) != n:
        raise ScenarioError(f"{len(nodes)} node hosts for partition.num_clients={n}")
    launcher = Launcher(scenario, run_dir, insecure, superlink or Host(), nodes)
    data_paths = launcher.prepare()
    (launcher.deploy_dir / "superlink").mkdir(exist_ok=True)
    # Owner-only (0700) and short: a unix socket's path has at most 107 bytes.
    sockets = Path(tempfile.mkdtemp(prefix="fedtune-workers-")) if worker else None
    with sigterm_as_interrupt(), _removed(sockets), Processes(launcher.env) as procs:
        superlink_log = launcher.deploy_dir / "superlink" / "superlink.log"
        procs.start("SuperLink", launcher.superlink_cmd(), superlink_log, launcher.deploy_dir)
        wait_until(
            "the SuperLink",
            lambda: "Uvicorn running on" in superlink_log.read_text(errors="replace"),
            procs,
            timeout,
        )
        for pid, data_path in enumerate(data_paths):
            key = None
            if not insecure:
                key = launcher.certs / f"node-{pid}"
                result = launcher.control(
                    "supernode", "register", f"{key}.pub", CONNECTION, "--name", f"node-{pid}"
                )
                if result.returncode != 0:
                    raise DeployError(f"registering node-{pid} failed:\n{result.stdout}")
            node_dir = data_path.parent
            home = {"FLWR_HOME": str(node_dir / "flwr-home")}
            socket_path = sockets / f"node-{pid}.sock" if sockets else None
            if socket_path is not None:
                start_worker(launcher, procs, pid, socket_path, timeout)
            cmd = launcher.supernode_cmd(pid, data_path, key, socket_path)
            procs.start(f"SuperNode {pid}", cmd, node_dir / "supernode.log", node_dir, home)
        wait_until(f"{n} SuperNodes online", lambda: online_nodes(launcher) >= n, procs, timeout)
        cmd = [*launcher.superlink.prefix, "flwr", "run", str(APP_DIR), CONNECTION]
        cmd += ["--run-config", str(launcher.deploy_dir / "run_config.toml"), "--stream"]
        run = subprocess.Popen(
            cmd,
            cwd=APP_DIR,
            env=launcher.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            stream(run, launcher.deploy_dir / "flwr-run.log", quiet, procs)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if run.returncode != 0 or summary is None:
        log = launcher.deploy_dir / "flwr-run.log"
        raise DeployError(f"the run failed (flwr run exited {run.returncode}):\n{tail(log)}")
    return summary
