"""The `fedtune` command line."""

from __future__ import annotations

import argparse
import sys

from fedtune.config import ScenarioError, load_scenario, parse_override
from fedtune.data import DataError
from fedtune.model import ModelError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtune", description="Federated fine-tuning of BERT-family text classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "simulate the federation (Flower Simulation Engine, one process per client)"),
        ("centralized", "train on the union of the clients' data (the baseline)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("scenario", help="scenario YAML file, or a shipped name (quickstart)")
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a scenario key, e.g. --set federation.rounds=5 (repeatable)",
        )
        cmd.add_argument("--output", help="run directory (default runs/<name>-<timestamp>)")
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
        if name == "run":
            cmd.add_argument("--verbose", action="store_true", help="Flower and Ray logs too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = dict(parse_override(item) for item in args.overrides)
        if args.output:
            overrides["output.dir"] = args.output
        scenario = load_scenario(args.scenario, overrides)
        from fedtune import runtime  # heavy imports only once the input is valid

        if args.command == "run":
            summary = runtime.run_federated(scenario, args.quiet, args.verbose)
        else:
            summary = runtime.run_centralized(scenario, args.quiet)
    except (ScenarioError, DataError, ModelError) as exc:
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return 2
    final = summary["final"]
    print(
        f"{summary['mode']} run of {summary['scenario']!r}: {summary['rounds_completed']} rounds, "
        f"accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f}, "
        f"outputs in {summary['run_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
