"""The `fedtune` command line's parser: every command, its arguments and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from fedtune import audit as limits
from fedtune.errors import FedtuneError, cut

MAX_CERT_NODES = 10_000
MAX_PROCESSES = 64
"""`sweep --parallel` and `serve --workers`: each is a process with its own model."""


class UsageError(FedtuneError):
    """Bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    """argparse, its errors raised as UsageError: one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("fedtune").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} -h)")


def _integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (a bigger one can only be a
    mistake: each sets how much work or how many processes a command starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {cut(text, 40)!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {low} and {high}, not {cut(str(value), 40)}"
            )
        return value

    return parse


def _metric_value(text: str) -> float:
    """`--target`: a value of accuracy, macro-F1 or AUC, above 0 and at most 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text}")
    return value


def _port(text: str) -> int:
    """`--port`: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value}")
    return value


def _add_overrides(cmd: argparse.ArgumentParser, text: str) -> None:
    """`--set KEY=VALUE`, repeatable, into `overrides`."""
    cmd.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedtune", description="Federated fine-tuning of BERT-family text classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "simulate the federation (Flower Simulation Engine, one process per client)"),
        ("centralized", "train on the union of the clients' data (the baseline)"),
        ("local", "train each client alone on its own data (the local-only baseline)"),
        ("deploy", "run on a local deployment: a SuperLink and one SuperNode per client (TLS)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "scenario",
            nargs="?",
            help="scenario YAML file, or a shipped name (quickstart)",
        )
        _add_overrides(cmd, "override a scenario key, e.g. --set federation.rounds=5 (repeatable)")
        cmd.add_argument(
            "--output",
            help="run directory (default runs/<name>-<timestamp>): new, or empty",
        )
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
        if name != "local":
            cmd.add_argument(
                "--target",
                type=_metric_value,
                metavar="VALUE",
                help="report the cost to reach VALUE on the headline metric (rounds, wall "
                "seconds, client seconds, bytes) in summary.json; sets federation.target",
            )
        if name == "centralized":
            cmd.add_argument(
                "--converged",
                action="store_true",
                help="also train from the same start until the pooled validation score stops "
                "improving (at most 3x the rounds' examples; the stronger reference)",
            )
        if name == "deploy":
            cmd.add_argument(
                "--insecure", action="store_true", help="no TLS and no SuperNode authentication"
            )
            cmd.add_argument(
                "--worker",
                action="store_true",
                help="a warm `fedtune worker` next to each SuperNode (model and shard kept "
                "loaded between messages)",
            )
        if name == "run":
            cmd.add_argument("--verbose", action="store_true", help="Flower and Ray logs too")
            cmd.add_argument(
                "--ray-address",
                metavar="HOST:PORT|auto",
                help="run the clients on an existing Ray cluster (`ray start --head`), not a "
                "private one on this machine",
            )
            cmd.add_argument(
                "--resume",
                metavar="RUN_DIR",
                help="continue an interrupted run from its last complete round "
                "(its scenario.json; --set still applies)",
            )
    _sweep_parser(sub)
    work = sub.add_parser(
        "worker",
        help="serve a SuperNode's messages from a warm process (its --node-config names "
        "worker-socket=PATH)",
    )
    work.add_argument("--socket", required=True, help="the unix socket to listen on (mode 0600)")
    certs = sub.add_parser(
        "certs", help="create a CA, the SuperLink's TLS certificate and SuperNode key pairs"
    )
    certs.add_argument("out_dir", help="directory to write into (new, or without these files)")
    certs.add_argument(
        "--nodes",
        type=_integer(0, MAX_CERT_NODES),
        default=2,
        help=f"SuperNode key pairs (default 2, at most {MAX_CERT_NODES})",
    )
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
    _add_overrides(shards, "override a scenario key (repeatable)")
    audit = sub.add_parser(
        "audit",
        help="attack a finished simulated run: token recovery from a client's update and "
        "membership inference on the final model (audit.json)",
    )
    audit.add_argument("run_dir")
    audit.add_argument(
        "--batch-size",
        type=_integer(1, limits.MAX_BATCH_SIZE),
        help=f"texts per attacked update (default: the run's; at most {limits.MAX_BATCH_SIZE})",
    )
    audit.add_argument(
        "--batches",
        type=_integer(1, limits.MAX_BATCHES),
        default=8,
        help=f"updates attacked (default 8, at most {limits.MAX_BATCHES})",
    )
    audit.add_argument(
        "--inversion-steps",
        type=_integer(0, limits.MAX_INVERSION_STEPS),
        default=100,
        help="gradient-matching steps per attacked update (default 100; 0: word rows only; "
        f"at most {limits.MAX_INVERSION_STEPS}, about 0.35 s each at batch size 1 on 2 CPUs)",
    )
    audit.add_argument(
        "--max-examples",
        type=_integer(1, limits.MAX_EXAMPLES),
        default=500,
        help="members and as many non-members for membership inference (default 500, at "
        f"most {limits.MAX_EXAMPLES})",
    )
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
    pred.add_argument(
        "--file",
        help="a UTF-8 file of texts, one per line (blank lines skipped); a .jsonl file: one "
        'object per line, {"text": ..., feature: value, ...} (a fusion model\'s features)',
    )
    export = sub.add_parser(
        "export",
        help="a quantized copy of a saved model for CPU inference (size and test accuracy "
        "against fp32 in OUT/export.json)",
    )
    export.add_argument("model_dir")
    export.add_argument("out_dir", help="the export's directory (new, or empty)")
    export.add_argument(
        "--quantize",
        choices=["int8", "onnx-int8"],
        required=True,
        help="int8: PyTorch dynamic int8 quantization of the Linear layers; onnx-int8: the "
        "model as ONNX, int8 by ONNX Runtime's dynamic quantization, run by ONNX Runtime "
        "(text-only models; faster on CPU)",
    )
    serve = sub.add_parser("serve", help="serve a saved model over HTTP (POST /predict)")
    serve.add_argument("model_dir")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--api-key-file",
        help="API keys, one per line, each at least 16 characters of A-Z a-z 0-9 + / = _ - "
        "(e.g. `openssl rand -hex 32`; the file owner-only): /predict and /metrics then need "
        "'Authorization: Bearer KEY' (or 'X-API-Key: KEY'); /health stays open",
    )
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--workers",
        type=_integer(1, MAX_PROCESSES),
        default=1,
        help=f"server processes (each loads the model; at most {MAX_PROCESSES})",
    )
    return parser


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    text = (
        "run a scenario once per point of a grid of overrides (and the baselines once), "
        "resumable, then compare the runs"
    )
    sweep = sub.add_parser("sweep", help=text, description=text)
    sweep.add_argument("scenario", nargs="?", help="scenario YAML file, or a shipped name")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a scenario key and its values (YAML; commas inside [] or {} separate nothing); "
        "repeatable: the runs are every combination",
    )
    _add_overrides(sweep, "an override of every run and baseline (repeatable)")
    sweep.add_argument(
        "--with-baselines",
        action="store_true",
        help="also run `fedtune centralized` and `fedtune local` once (the base scenario)",
    )
    sweep.add_argument(
        "--target",
        type=_metric_value,
        metavar="VALUE",
        help="each run's cost to reach VALUE on the headline metric (default, with "
        "--with-baselines: the centralized run's final value)",
    )
    sweep.add_argument(
        "--parallel",
        type=_integer(1, MAX_PROCESSES),
        default=1,
        help=f"runs at once (default 1, at most {MAX_PROCESSES})",
    )
    sweep.add_argument(
        "--ray-address",
        metavar="HOST:PORT|auto",
        help="run the clients on an existing Ray cluster (use with --parallel)",
    )
    sweep.add_argument(
        "--output", help="the sweep's directory (default runs/sweep-<name>-<time>): new, or empty"
    )
    sweep.add_argument(
        "--resume",
        metavar="SWEEP_DIR",
        help="continue an interrupted sweep: finished runs are kept, the rest run",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress lines")
