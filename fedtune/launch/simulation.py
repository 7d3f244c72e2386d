"""The federated simulation (Flower Simulation Engine, Ray): inputs checked before Ray
starts, the run directory, and the run itself (its teardown is `fedtune.launch.teardown`,
the baselines `fedtune.launch.baselines`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

from flwr.common.logger import console_handler
from flwr.simulation import run_simulation

from fedtune.config import Scenario, ScenarioError
from fedtune.data.corpus import (
    client_splits,
    federated_data,
)
from fedtune.errors import FedtuneError, first_line
from fedtune.federation.client.app import build_client_app
from fedtune.federation.server.app import build_server_app
from fedtune.federation.server.checkpoint import load_checkpoint
from fedtune.launch.ray_cluster import check_ray_cluster
from fedtune.launch.teardown import (
    NoSigtermNotice,
    capture_stop_event,
    process_tree,
    stop_ray,
)
from fedtune.modeling.model import check_model
from fedtune.runs.directory import claim_run_dir
from fedtune.runs.recorder import default_run_dir


class _QuietConsole(logging.Filter):
    """Keeps Flower's deprecation notices and client tracebacks off the screen (fedtune
    prints one line per failed client; run.log keeps the full tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(
            marker in text
            for marker in (
                "deprecated",
                "Traceback (most recent call last)",
                "ClientAppException",
                "An exception was raised when processing a message",
            )
        )


def prepare_run_dir(scenario: Scenario, mode: str, resume: bool = False) -> Path:
    """The run directory, made and held by this process until it ends (`claim_run_dir`);
    refuse a link, a file, a directory another process writes into, one that already holds
    a run (unless `resume`), and a non-empty directory that is not a run (fedtune never
    overwrites files it did not write). `fedtune` checks `output.dir` itself before anything
    starts; this covers the default `runs/<name>-<time>`, other callers and a race."""
    run_dir = default_run_dir(scenario, mode)
    claim_run_dir(run_dir, resume)
    return run_dir


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a simulation; its Ray processes are gone, but its
    ServerApp thread may still be alive (the caller ends the process with `os._exit`)."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports


class SimulationError(FedtuneError):
    """The simulation engine stopped with an error of its own (not a client's)."""

    exit_code = 1


def check_resources(scenario: Scenario) -> None:
    """Fail before Ray starts when not one client fits this machine: Flower would stop with
    "ActorPool is empty" and a traceback (Ray counts CPUs as below, GPUs as CUDA does)."""
    resources = scenario.federation.client_resources
    key = "federation.client_resources"
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - Ray internals moved: count as the OS does
        cpus = float(os.cpu_count() or 1)
    if resources.num_cpus > cpus:
        raise ScenarioError(
            f"{key}.num_cpus={resources.num_cpus:g}: this machine has {cpus:g} CPUs for clients"
        )
    if resources.num_gpus > 0:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resources.num_gpus > gpus:
            raise ScenarioError(
                f"{key}.num_gpus={resources.num_gpus:g}: this machine has {gpus} GPUs"
            )


def check_inputs(scenario: Scenario) -> None:
    """Fail before any process starts: data loads, every shard is usable, model loads."""
    fed = federated_data(scenario)
    for pid in range(scenario.partition.num_clients):
        client_splits(fed, pid, scenario.data.val_size, scenario.seed)
    check_model(scenario.model.name)


def run_federated(
    scenario: Scenario,
    quiet: bool = False,
    verbose: bool = False,
    resume: bool = False,
    ray_address: str | None = None,
) -> dict:
    """Simulate the federation: one Ray actor process per concurrently training client, on a
    private Ray instance or on the cluster at `ray_address`. With `resume`, continue the run
    in `output.dir` from its last complete round."""
    if ray_address is None:
        check_resources(scenario)
    else:
        check_ray_cluster(ray_address)
    check_inputs(scenario)
    if resume:  # checked whole now: not in the server thread, nor once the run dir is claimed
        load_checkpoint(default_run_dir(scenario), scenario)
    run_dir = prepare_run_dir(scenario, "", resume)
    # The nodes keep their own state under the run directory: they must know where it is.
    output = scenario.output.model_copy(update={"dir": str(run_dir)})
    scenario = scenario.model_copy(update={"output": output})
    resources = scenario.federation.client_resources
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO)  # all of it into run.log ...
    console_handler.setLevel(logging.INFO if verbose else logging.WARNING)  # ... less on screen
    if not verbose:
        console_handler.addFilter(_QuietConsole())
    # Ray's notice about a future default; fedtune relies on today's (CPU-only clients
    # get no GPU when num_gpus is 0).
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    simulate(
        run_dir,
        server_app=build_server_app(scenario, run_dir, quiet, resume),
        client_app=build_client_app(scenario),
        num_supernodes=scenario.partition.num_clients,
        backend_config={
            "client_resources": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
            "init_args": {
                "logging_level": "WARNING",
                "log_to_driver": verbose,
                **({"address": ray_address} if ray_address else {}),
            },
        },
        verbose_logging=verbose,
    )
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise SimulationError(
            f"the simulation ended without writing {summary_path}; see the log above"
        )
    return json.loads(summary_path.read_text())


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def simulate(run_dir: Path, **kwargs: Any) -> None:
    """`flwr.simulation.run_simulation(**kwargs)`, stoppable by one SIGINT or SIGTERM.

    Flower runs the simulation loop in the calling thread and the ServerApp in a second one;
    a KeyboardInterrupt in the loop leaves the ServerApp thread waiting for replies (up to
    `round_timeout`) and Ray's SIGTERM handler aborts the interpreter. So the simulation
    runs in a worker thread, and the main thread, holding SIGINT and SIGTERM, waits for it.
    On a signal it stops Flower's message loop (no reply, not even the errors of clients that
    the signal killed, reaches the ServerApp: no checkpoint is written for a round that did
    not complete), shuts Ray down, kills what is left of this process's descendants, and
    raises `Interrupted`. The last complete round's checkpoint stays as it was."""
    if threading.current_thread() is not threading.main_thread():
        run_simulation(**kwargs)  # signals are the main thread's business
        return
    done = threading.Event()
    failure: list[BaseException] = []
    stop_events: list[threading.Event] = []
    received: list[int] = []
    tree: list[tuple[int, str]] = []

    def on_signal(signum: int, frame: object) -> None:
        if not received:
            tree.extend(process_tree())  # before any of them exits or is reparented
            for event in stop_events:
                event.set()
        received.append(signum)

    def target() -> None:
        try:
            run_simulation(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)
        finally:
            done.set()

    # ray.init, now in a worker thread, says it cannot install its SIGTERM handler (the
    # handler that made SIGTERM abort the interpreter): fedtune's own handles SIGTERM.
    ray_logger = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, NoSigtermNotice) for f in ray_logger.filters):
        ray_logger.addFilter(NoSigtermNotice())
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        with capture_stop_event(stop_events):
            worker = threading.Thread(target=target, name="fedtune-simulation", daemon=True)
            worker.start()
            while not received and not done.wait(0.1):
                # Ray's C++ core installs a crash handler for SIGTERM when it starts (it
                # prints a stack dump, then chains here): take the signal back each time.
                for signum in STOP_SIGNALS:
                    signal.signal(signum, on_signal)
        if received:
            # The clients the signal stopped make Flower log "actor died" errors from the
            # simulation thread, which outlives this call: the user asked for the stop, so
            # Flower's log stays quiet from here on (the process is ending).
            logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)
            stop_ray(tree)
            raise Interrupted(received[0], run_dir)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failure:
        exc = failure[0]
        if isinstance(exc, FedtuneError):
            raise exc
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        detail = first_line(cause, 300) if str(cause).strip() else ""
        log_file = run_dir / "run.log"
        where = f"; see {log_file}" if log_file.exists() else ""
        raise SimulationError(
            f"the simulation stopped: {type(cause).__name__}: {detail}{where}"
        ) from exc
