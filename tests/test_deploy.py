"""Deployment: `fedtune deploy` (SuperLink + SuperNodes as separate processes, TLS and
SuperNode authentication), parity with `fedtune run`, each node reading only its own file,
refused connections, separate network namespaces, and the docker-compose file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, fedtune, write_toy_corpus
from cryptography import x509
from test_end_to_end import check_outputs

from fedtune.config import scenario_from_dict
from fedtune.launch.deploy import Host, Launcher, Processes, deploy, free_port, wait_until

AUDIT = """
import json, os, sys
_dir = os.environ.get("FEDTUNE_AUDIT_DIR")
if _dir:
    _busy, _seen = [False], set()
    def _hook(event, args):
        if event != "open" or _busy[0] or not isinstance(args[0], (str, os.PathLike)):
            return
        path, mode, flags = os.path.abspath(os.fsdecode(args[0])), args[1], args[2]
        reading = ("r" in mode and "+" not in mode) if mode else (flags & 3) == os.O_RDONLY
        if reading and path.endswith((".csv", ".jsonl")) and path not in _seen:
            _seen.add(path)
            _busy[0] = True
            try:
                with open(os.path.join(_dir, f"{os.getpid()}.log"), "a") as out:
                    out.write(json.dumps({"path": path, "home": os.environ.get("FLWR_HOME", ""),
                                          "argv": sys.argv[:2]}) + "\\n")
            finally:
                _busy[0] = False
    sys.addaudithook(_hook)
"""
"""A sitecustomize that logs every .csv/.jsonl file each Python process opens to read."""


def tiny_raw(model_dir: Path, csv: Path, run_dir: Path, **training) -> dict:
    return {
        "name": "tiny",
        "seed": 7,
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {
            "source": str(csv),
            "text_column": "message",
            "label_column": "sentiment",
            "val_size": 0.0,  # no evaluate messages: keeps each round to one message per node
        },
        "partition": {"kind": "iid", "num_clients": 2},
        "federation": {"rounds": 2, "min_available_nodes": 2},
        "training": {"batch_size": 8, "lr": 5e-3, "local_epochs": 2, **training},
        "output": {"dir": str(run_dir)},
    }


def _run_audited(mode: str, raw: dict, tmp: Path, audit: Path | None) -> Path:
    """`fedtune MODE` of `raw` in a subprocess; with `audit`, every .csv/.jsonl any of its
    processes opens is logged there."""
    path = tmp / f"{raw['output']['dir'].rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = None
    if audit is not None:
        audit.mkdir(exist_ok=True)
        (audit / "sitecustomize.py").write_text(AUDIT)
        pythonpath = os.pathsep.join(p for p in (str(audit), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "FEDTUNE_AUDIT_DIR": str(audit), "PYTHONPATH": pythonpath}
    command, *flags = mode.split()
    result = subprocess.run(
        [sys.executable, "-m", "fedtune.cli", command, str(path), "--quiet", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return Path(raw["output"]["dir"])


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, toy_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same tiny scenario under `fedtune run`, `fedtune deploy` (TLS + node auth) and
    `fedtune deploy --worker`, each deployment with every .csv/.jsonl opened by any of its
    processes logged."""
    tmp = tmp_path_factory.mktemp("deploy")
    out = {"source": toy_csv.resolve()}
    for mode in ("run", "deploy", "deploy --worker"):
        name = mode.replace(" --", "-")
        audit = tmp / f"audit-{name}" if mode != "run" else None
        raw = tiny_raw(tiny_model_dir, toy_csv, tmp / name)
        out[name], out[f"audit-{name}"] = _run_audited(mode, raw, tmp, audit), audit
    return out


@pytest.mark.deploy("three deployments (TLS, node authentication) and a simulation")
def test_deploy_with_tls_and_node_auth(runs: dict) -> None:
    run_dir = runs["deploy"]
    out = check_outputs(run_dir, "federated", rounds=2, clients=2)
    deploy_dir = run_dir / "deploy"
    superlink_cmd = (deploy_dir / "superlink" / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1:" in superlink_cmd
    for name in ("ca.crt", "server.pem", "node-0.pub", "node-1.pub"):
        assert (deploy_dir / "certs" / name).is_file()
    for line in out["lines"][1:]:
        clients = sorted(line["clients"]["train"], key=lambda c: c["partition-id"])
        assert [c["partition-id"] for c in clients] == [0, 1]
        for client in clients:
            assert client["setup_seconds"] >= 0 and client["startup_seconds"] > 0
    # each node tokenized its shard once: round 2 loaded it from the node's disk cache
    for pid in (0, 1):
        assert len(list((run_dir / "nodes" / f"node-{pid}" / "cache" / "shards").iterdir())) == 1


@pytest.mark.deploy("reads the deployments of the module's fixture")
def test_the_worker_keeps_each_node_loaded(runs: dict) -> None:
    """With `--worker`, a node's second message finds its model and shard loaded."""
    run_dir = runs["deploy-worker"]
    out = check_outputs(run_dir, "federated", rounds=2, clients=2)
    first, second = (
        {c["partition-id"]: c for c in line["clients"]["train"]} for line in out["lines"][1:]
    )
    for pid in (0, 1):
        assert second[pid]["setup_seconds"] < first[pid]["setup_seconds"]
        assert "listening on" in (run_dir / "nodes" / f"node-{pid}" / "worker.log").read_text()


@pytest.mark.deploy("reads the deployments of the module's fixture")
@pytest.mark.parametrize("deployment", ["deploy", "deploy-worker"])
def test_parity_with_simulation(runs: dict, deployment: str) -> None:
    """Same scenario and seed: the deployment (with or without the warm worker) ends with
    the simulation's metrics."""
    sim = json.loads((runs["run"] / "summary.json").read_text())["history"]
    dep = json.loads((runs[deployment] / "summary.json").read_text())["history"]
    print(f"\nsimulation {[(h['accuracy'], h['loss']) for h in sim]}")
    print(f"deployment {[(h['accuracy'], h['loss']) for h in dep]}")
    assert abs(sim[-1]["accuracy"] - dep[-1]["accuracy"]) <= 0.01
    for s, d in zip(sim, dep, strict=True):
        assert d["loss"] == pytest.approx(s["loss"], abs=1e-4)
    assert dep[-1]["loss"] < dep[0]["loss"]


def opened_files(audit: Path) -> dict[str, set[str]]:
    """The .csv/.jsonl files each FLWR_HOME's processes opened to read."""
    opened: dict[str, set[str]] = {}
    for log in audit.glob("*.log"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            opened.setdefault(entry["home"], set()).add(entry["path"])
    return opened


def check_each_node_reads_only_its_own_file(run_dir: Path, audit: Path, source: Path) -> None:
    nodes = run_dir / "nodes"
    opened = opened_files(audit)
    pids = sorted(int(p.name.split("-")[1]) for p in nodes.iterdir())
    for pid in pids:
        home = str(nodes / f"node-{pid}" / "flwr-home")
        assert opened.get(home) == {str(nodes / f"node-{pid}" / "data.jsonl")}, opened
    node_files = {str(nodes / f"node-{pid}" / "data.jsonl") for pid in pids}
    server_side = set().union(*(v for k, v in opened.items() if "/nodes/" not in k))
    assert str(source) in server_side, "the server read the scenario's data"
    assert not server_side & node_files, "the server side never reads a node's file"


@pytest.mark.deploy("reads the deployments of the module's fixture")
@pytest.mark.parametrize("deployment", ["deploy", "deploy-worker"])
def test_each_node_reads_only_its_own_file(runs: dict, deployment: str) -> None:
    """Every .csv/.jsonl a process opened, by the FLWR_HOME it runs under: a node's
    processes (SuperNode, its ClientApps, its worker) open only that node's data.jsonl."""
    audit = runs[f"audit-{deployment}"]
    check_each_node_reads_only_its_own_file(runs[deployment], audit, runs["source"])


@pytest.mark.deploy("a SecAgg+ deployment")
def test_with_secagg_each_node_reads_only_its_own_file(
    tiny_model_dir: Path, toy_csv: Path, tmp_path: Path
) -> None:
    """SecAgg+ train messages carry the federation's label names too: a deployed node
    never falls back to reading the scenario's data (3 nodes: SecAgg+ needs 3 shares)."""
    raw = tiny_raw(tiny_model_dir, toy_csv, tmp_path / "secagg")
    raw["partition"]["num_clients"] = 3
    raw["federation"] = {"rounds": 1}
    raw["privacy"] = {"secagg": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2}}
    run_dir = _run_audited("deploy", raw, tmp_path, tmp_path / "audit")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 1 and summary["privacy"]["secagg"]
    check_each_node_reads_only_its_own_file(run_dir, tmp_path / "audit", toy_csv.resolve())


@pytest.fixture
def tls_superlink(make_scenario, tmp_path: Path) -> Iterator[tuple[Launcher, Processes]]:
    """A SuperLink with TLS and SuperNode authentication, no node registered."""
    launcher = Launcher(make_scenario(), tmp_path / "run", False, Host(), [Host(), Host()])
    launcher.prepare()
    (launcher.deploy_dir / "superlink").mkdir()
    log = launcher.deploy_dir / "superlink" / "superlink.log"
    with Processes(launcher.env) as procs:
        procs.start("SuperLink", launcher.superlink_cmd(), log, launcher.deploy_dir)
        wait_until("the SuperLink", lambda: "Uvicorn running" in log.read_text(), procs, 60)
        yield launcher, procs


def _supernode(launcher: Launcher, name: str, *flags: str) -> tuple[int, str]:
    """Start a SuperNode in its own process group (its SuperExec child too), wait for it to
    exit, stop the group; return its exit code and log."""
    cmd = ["flower-supernode", "--superlink", launcher.address, "--max-retries", "1", *flags]
    cmd += ["--port", str(free_port())]
    log = launcher.run_dir / f"{name}.log"
    with Processes(launcher.env) as procs:
        proc = procs.start(name, cmd, log, launcher.run_dir)
        code = proc.wait(timeout=60)
    return code, log.read_text()


@pytest.mark.deploy("a SuperLink with TLS and SuperNodes that it refuses")
def test_unregistered_node_and_plaintext_are_refused(tls_superlink) -> None:
    launcher, _ = tls_superlink
    ca, key = launcher.certs / "ca.crt", launcher.certs / "node-1"
    code, log = _supernode(
        launcher,
        "unregistered",
        *("--root-certificates", str(ca), "--auth-supernode-private-key", str(key)),
    )
    assert code != 0 and "Failed to activate SuperNode" in log, log
    code, log = _supernode(launcher, "plaintext", "--insecure")
    assert code != 0 and "Failed to initialize the connection" in log, log
    # the flwr CLI over plaintext is refused too
    home = Path(launcher.env["FLWR_HOME"])
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "plain"\n[superlink.plain]\n'
        f'address = "{launcher.address}"\ninsecure = true\n'
    )
    listing = launcher.control("supernode", "list", "plain")
    assert listing.returncode != 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """Three network namespaces on a bridge (itself in a fourth namespace), each a host
    with its own 10.x address: (namespace, address) for the SuperLink and two nodes."""
    tag = uuid.uuid4().hex[:6]
    bridge = f"ftbr{tag}"
    try:
        _ip("netns", "add", bridge)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot create network namespaces here (`ip netns add`: {exc})")
    made = [bridge]
    hosts = []
    try:
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for k in range(3):
            ns, outer, inner = f"ft{k}{tag}", f"ftv{k}{tag}", f"ftp{k}{tag}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "netns", bridge)
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", bridge, "link", "set", outer, "master", "br0")
            _ip("-n", bridge, "link", "set", outer, "up")
            address = f"10.213.{int(tag[:2], 16)}.{k + 1}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            hosts.append((ns, address))
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.deploy("a deployment across network namespaces")
def test_superlink_and_nodes_on_separate_hosts(
    namespaces, tiny_model_dir: Path, toy_csv: Path, tmp_path: Path
) -> None:
    """SuperLink and each SuperNode in their own network namespace, reached by address."""
    (superlink_ns, superlink_ip), *node_hosts = namespaces
    raw = tiny_raw(tiny_model_dir, toy_csv, tmp_path / "run")
    raw["federation"]["rounds"] = 1
    summary = deploy(
        scenario_from_dict(raw),
        quiet=True,
        superlink=Host(superlink_ip, ("ip", "netns", "exec", superlink_ns)),
        nodes=[Host(ip, ("ip", "netns", "exec", ns)) for ns, ip in node_hosts],
    )
    assert summary["rounds_completed"] == 1
    log = (tmp_path / "run" / "deploy" / "superlink" / "superlink.log").read_text()
    assert f"Uvicorn running on https://{superlink_ip}:" in log
    for _, ip in node_hosts:  # the nodes reached the SuperLink from their own addresses
        assert f"{ip}:" in log


def test_certs_command(tmp_path: Path) -> None:
    result = fedtune("certs", str(tmp_path / "certs"), "--nodes", "1", "--name", "10.9.8.7")
    assert result.returncode == 0, result.stderr
    server = x509.load_pem_x509_certificate((tmp_path / "certs" / "server.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.9.8.7" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "superlink"} <= set(sans.get_values_for_type(x509.DNSName))
    assert (tmp_path / "certs" / "node-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert oct((tmp_path / "certs" / "node-0").stat().st_mode)[-3:] == "600"


@pytest.mark.slow("a fedtune deploy process")
def test_deploy_bad_input_exits_2(make_scenario, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(make_scenario().model_dump(mode="json")))
    result = fedtune("deploy", str(path), "--set", "data.label_column=stars")
    assert result.returncode == 2
    assert "data.label_column 'stars' not among the columns" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow("a fedtune shards process")
def test_shards_command(make_scenario, tmp_path: Path) -> None:
    """`fedtune shards` writes each client's shard, as `fedtune deploy` gives its nodes."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(make_scenario().model_dump(mode="json")))
    result = fedtune("shards", str(path), str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    rows = [
        json.loads(line)
        for pid in (0, 1)
        for line in (tmp_path / "data" / f"node-{pid}" / "data.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 192  # 240 examples less the 20% test split
    assert {r["sentiment"] for r in rows} == {"negative", "neutral", "positive"}
    assert len({r["message"] for r in rows}) == len(rows), "shards are disjoint"


@pytest.mark.deploy("needs Debian's docker-compose (apt-get install docker-compose)")
@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="needs docker-compose: apt-get install docker-compose",
)
def test_docker_compose_file_is_valid() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def _node_setting(services: dict, pid: int, key: str) -> str:
    """A string setting of `supernode-<pid>`'s `--node-config` in the compose file."""
    node_config = next(
        arg for arg in services[f"supernode-{pid}"]["command"] if "--node-config" in arg
    )
    return node_config.split(f'{key}="')[1].split('"')[0]


def test_docker_compose_clientapps_use_a_warm_worker() -> None:
    """Each node's SuperNode names the worker socket that its ClientApp container's
    entrypoint starts `fedtune worker` on (next to Flower's SuperExec)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for pid in (0, 1):
        socket_path = _node_setting(services, pid, "worker-socket")
        for name in (f"superexec-clientapp-{pid}", f"superexec-clientapp-{pid}-gpu"):
            if name not in services:
                continue
            start = services[name]["entrypoint"][2]
            assert f"fedtune worker --socket {socket_path} &" in start
            assert "exec flower-superexec" in start


def test_docker_image_owns_the_directories_the_supernodes_name() -> None:
    """Flower's images run as uid 49999 (`app`), which cannot create directories under `/`:
    the fedtune image creates each worker socket's directory and cache directory, owned by
    app (a real compose run failed on both before)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    (created,) = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "install -d" in line
    ]
    for pid in (0, 1):
        socket_dir = Path(_node_setting(services, pid, "worker-socket")).parent
        cache_dir = _node_setting(services, pid, "cache-dir")
        assert f"-o app -g app {socket_dir}" in created
        assert f"-o app -g app {cache_dir}" in created


def test_server_with_its_own_eval_file_never_reads_the_clients_data(
    make_scenario, run_local, monkeypatch, tmp_path: Path
) -> None:
    """`data.eval_source`: the server evaluates on its own file; the clients' source is only
    read by the clients (here in-process), never by server code."""
    eval_file = write_toy_corpus(tmp_path / "server_eval.csv", 60, seed=5)
    scenario = make_scenario(data={"eval_source": str(eval_file)})

    def no_client_data(_scenario):
        raise AssertionError("server code read the clients' data.source")

    monkeypatch.setattr("fedtune.federation.server.app.federated_data", no_client_data)
    summary = run_local(scenario)
    last = json.loads(Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()[-1])
    per_class = last["central"]["per_class"]
    assert sum(per_class[label]["support"] for label in ("negative", "neutral", "positive")) == 60
    assert summary["rounds_completed"] == 2
    assert not Path(summary["run_dir"], "partition.json").exists()
