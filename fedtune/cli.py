"""The `fedtune` command line."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from fedtune.checkpoint import CheckpointError
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
        ("deploy", "run on a local deployment: a SuperLink and one SuperNode per client (TLS)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "scenario",
            nargs="?",
            help="scenario YAML file, or a shipped name (quickstart)",
        )
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
        if name == "deploy":
            cmd.add_argument(
                "--insecure", action="store_true", help="no TLS and no SuperNode authentication"
            )
        if name == "run":
            cmd.add_argument("--verbose", action="store_true", help="Flower and Ray logs too")
            cmd.add_argument(
                "--resume",
                metavar="RUN_DIR",
                help="continue an interrupted run from its last complete round "
                "(its scenario.json; --set still applies)",
            )
    certs = sub.add_parser(
        "certs", help="create a CA, the SuperLink's TLS certificate and SuperNode key pairs"
    )
    certs.add_argument("out_dir", help="directory to write into")
    certs.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs (default 2)")
    certs.add_argument(
        "--name",
        dest="names",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name or IP address SuperNodes use to reach the SuperLink (repeatable; "
        "localhost, 127.0.0.1, ::1 and superlink are always included)",
    )
    shards = sub.add_parser(
        "shards", help="write each client's shard of a scenario's data as DIR/node-<i>/data.jsonl"
    )
    shards.add_argument("scenario", help="scenario YAML file, or a shipped name")
    shards.add_argument("out_dir")
    shards.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    report = sub.add_parser("report", help="write report.md/report.html (and figures) for a run")
    report.add_argument("run_dir")
    comp = sub.add_parser("compare", help="overlay curves and tabulate several runs")
    comp.add_argument("run_dirs", nargs="+")
    comp.add_argument(
        "--output", help="where to write compare.md/.html/.png (default runs/compare-<time>)"
    )
    pred = sub.add_parser("predict", help="label texts with a saved model (label, probability)")
    pred.add_argument("model_dir")
    pred.add_argument("texts", nargs="*")
    pred.add_argument("--file", help="a file of texts, one per line")
    serve = sub.add_parser("serve", help="serve a saved model over HTTP (POST /predict)")
    serve.add_argument("model_dir")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    return parser


def _use_model(args: argparse.Namespace) -> int:
    from fedtune import serving

    if args.command == "serve":
        serving.serve(args.model_dir, args.host, args.port)
        return 0
    texts = list(args.texts)
    if args.file:
        texts += [line for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line]
    if not texts:
        raise ValueError("give texts as arguments or --file FILE")
    for text, pred in zip(texts, serving.Predictor(args.model_dir).predict(texts), strict=True):
        print(f"{pred['label']}\t{pred['score']:.4f}\t{text}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedtune import report

    if args.command == "report":
        print(report.write_report(Path(args.run_dir)))
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.output or f"runs/compare-{stamp}")
        print(report.compare([Path(d) for d in args.run_dirs], out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("predict", "serve"):
        try:
            return _use_model(args)
        except (ValueError, OSError) as exc:
            print(f"fedtune: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "certs":
        from fedtune.certs import make_certs

        if args.nodes < 0:
            print("fedtune: error: --nodes must be >= 0", file=sys.stderr)
            return 2
        for path in make_certs(Path(args.out_dir), args.nodes, tuple(args.names)):
            print(path)
        return 0
    if args.command == "shards":
        try:
            overrides = dict(parse_override(item) for item in args.overrides)
            scenario = load_scenario(args.scenario, overrides)
            from fedtune.deploy import write_node_files

            for path in write_node_files(scenario, Path(args.out_dir)):
                print(path)
        except (ScenarioError, DataError) as exc:
            print(f"fedtune: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("report", "compare"):
        from fedtune.report import RunDirError

        try:
            return _report(args)
        except RunDirError as exc:
            print(f"fedtune: error: {exc}", file=sys.stderr)
            return 2
    resume = getattr(args, "resume", None)
    try:
        overrides = dict(parse_override(item) for item in args.overrides)
        if args.output or resume:
            overrides["output.dir"] = resume or args.output
        if resume:
            source = Path(resume) / "scenario.json"
            if not source.is_file():
                raise CheckpointError(f"{resume}: not a fedtune run (no scenario.json)")
        elif args.scenario is None:
            raise ScenarioError("give a SCENARIO (or --resume RUN_DIR)")
        scenario = load_scenario(source if resume else args.scenario, overrides)
        from fedtune import runtime  # heavy imports only once the input is valid

        if args.command == "run":
            summary = runtime.run_federated(scenario, args.quiet, args.verbose, bool(resume))
        elif args.command == "deploy":
            from fedtune import deploy

            try:
                summary = deploy.deploy(scenario, args.insecure, args.quiet)
            except deploy.DeployError as exc:
                print(f"fedtune: error: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(
                    "fedtune: interrupted; the processes it started were stopped", file=sys.stderr
                )
                return 130
        else:
            summary = runtime.run_centralized(scenario, args.quiet)
    except (ScenarioError, DataError, ModelError, CheckpointError) as exc:
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
