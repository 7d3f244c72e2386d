"""`fedtune run`, `centralized`, `local`, `deploy` and `worker`: training runs."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from fedtune.cli.parser import UsageError
from fedtune.config import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_override,
)
from fedtune.runs.directory import check_output_dir


def _scenario(args: argparse.Namespace, resume: str | None = None) -> Scenario:
    """The validated scenario of run/centralized/local/deploy, its output directory checked."""
    overrides = dict(parse_override(item) for item in args.overrides)
    if getattr(args, "target", None) is not None:
        overrides["federation.target"] = args.target
    if resume:
        source = Path(resume) / "scenario.json"
        if not source.is_file():
            raise UsageError(f"{resume}: not a fedtune run (no scenario.json)")
        overrides["output.dir"] = resume
        return load_scenario(source, overrides)
    if args.scenario is None:
        raise ScenarioError("give a SCENARIO (or --resume RUN_DIR)")
    if args.output:
        overrides["output.dir"] = args.output
    scenario = load_scenario(args.scenario, overrides)
    if scenario.output.dir:
        key = "--output" if args.output else "output.dir"
        check_output_dir(scenario.output.dir, key=key)
    return scenario


def _finished(summary: dict) -> int:
    """The closing line of a run: success, or an error when no round aggregated anything."""
    if summary.get("rounds_aggregated") == 0 and summary.get("rounds_completed", 0) > 0:
        print(
            "fedtune: error: no round aggregated any update (every client failed or was "
            f"rejected); see {Path(summary['run_dir']) / 'run.log'}",
            file=sys.stderr,
        )
        return 1
    final = summary["final"]
    what = f"{summary['rounds_completed']} rounds,"
    if summary["mode"] == "local":
        what = f"{summary['num_clients']} clients each trained alone, mean test"
    print(
        f"{summary['mode']} run of {summary['scenario']!r}: {what} "
        f"{headline(final, summary.get('majority_class'))}, outputs in {summary['run_dir']}"
    )
    return 0


HEADLINE_NAMES = {"auc": "AUC", "macro_f1": "macro-F1", "accuracy": "accuracy"}


def headline(final: dict, majority: dict | None) -> str:
    """Accuracy and macro-F1 (and AUC where measured), the headline one first (see
    `metrics.majority_baseline`), with what always predicting the majority class scores."""
    shown = [key for key in ("accuracy", "macro_f1", "auc") if key in final]
    if majority is not None and majority["headline"] in shown:
        shown.insert(0, shown.pop(shown.index(majority["headline"])))
    text = ", ".join(f"{HEADLINE_NAMES[key]} {final[key]:.4f}" for key in shown)
    if majority is None:
        return text
    values = " / ".join(f"{majority[key]:.4f}" for key in shown if key in majority)
    return f"{text} (majority class {majority['label']!r}: {values})"


def _check_ray_address(address: str | None) -> None:
    """`--ray-address`: a cluster must answer there, checked in seconds before anything
    loads or is written (Ray would retry for half a minute inside the run)."""
    if address is not None:
        from fedtune.launch.ray_cluster import check_ray_cluster

        check_ray_cluster(address)


def run_command(args: argparse.Namespace) -> int:
    _check_ray_address(args.ray_address)
    scenario = _scenario(args, args.resume)
    from fedtune.launch import simulation  # heavy imports only once the input is valid

    try:
        summary = simulation.run_federated(
            scenario, args.quiet, args.verbose, bool(args.resume), args.ray_address
        )
    except simulation.Interrupted as exc:
        _interrupted_run(exc)
    return _finished(summary)


def _interrupted_run(exc: KeyboardInterrupt) -> NoReturn:
    """One line, then end the process now: the simulation's ServerApp thread may still be
    waiting for replies that will never come (its Ray processes are gone)."""
    run_dir = getattr(exc, "run_dir", None)
    from fedtune.federation.server.checkpoint import (
        checkpoint_dir,  # loaded already: the run had started
    )

    resumable = run_dir is not None and checkpoint_dir(run_dir) is not None
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[2K\x1b[?25h")  # clear the progress line, show the cursor
    if resumable:
        print(f"fedtune: interrupted; resume with fedtune run --resume {run_dir}", file=sys.stderr)
    else:
        print("fedtune: interrupted before the first round's checkpoint", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(exc, "exit_code", 130))


def centralized_command(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import baselines

    summary = baselines.run_centralized(scenario, args.quiet, args.converged)
    code = _finished(summary)
    if "converged" in summary:
        run = summary["converged"]
        print(
            f"converged reference: {headline(run['final'], summary.get('majority_class'))} "
            f"after {run['rounds']} round-equivalents ({run['examples_seen']} examples; "
            f"{run['method']})"
        )
    return code


def local_command(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import baselines

    return _finished(baselines.run_local_only(scenario, args.quiet))


def deploy_command(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import deploy

    try:
        summary = deploy.deploy(scenario, args.insecure, args.quiet, worker=args.worker)
    except KeyboardInterrupt as exc:
        print("fedtune: interrupted; the processes it started were stopped", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    return _finished(summary)


def sweep_command(args: argparse.Namespace) -> int:
    _check_ray_address(args.ray_address)
    from fedtune.launch import sweep

    if args.resume:
        out = Path(args.resume)
        plan = sweep.read_plan(out)
    else:
        if args.scenario is None:
            raise ScenarioError("give a SCENARIO (or --resume SWEEP_DIR)")
        scenario = Path(args.scenario)
        source = str(scenario.resolve()) if scenario.is_file() else args.scenario
        grid = sweep.parse_grid(args.grid)
        plan = sweep.SweepPlan(source, grid, args.overrides, args.with_baselines, args.target)
        plan.plan_runs()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.output or f"runs/sweep-{scenario.stem}-{stamp}")
        if (out / sweep.SWEEP_FILE).exists():
            raise UsageError(f"{out} holds a sweep; continue it with fedtune sweep --resume {out}")
        check_output_dir(out, key="--output")
    sweep.validate(plan)
    report = sweep.run_sweep(plan, out, args.parallel, args.ray_address, args.quiet)
    print(f"sweep of {plan.scenario!r}: {len(plan.runs)} runs, comparison in {report}")
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from fedtune.federation.client import worker

    if not args.socket.strip():
        raise UsageError("--socket: give the unix socket's path (it is empty)")
    path = Path(args.socket).absolute()
    worker.serve(path, lambda: print(f"fedtune worker: listening on {path}", flush=True))
    return 0
