"""The `fedtune` command line.

Every command is a handler in `COMMANDS`. A problem the user can fix is a `FedtuneError`:
`main` prints it as one line, `fedtune: error: ...`, and exits with its `exit_code`
(2, or 1 for a deployment that failed); bad command-line syntax is one too. Ctrl-C (SIGINT)
and SIGTERM end a command with one line and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import ipaddress
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import NoReturn, TypeVar

from fedtune.config import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_override,
)
from fedtune.errors import FedtuneError
from fedtune.runs.directory import check_output_dir

MAX_CERT_NODES = 10_000
MAX_TEXT_CHARS = 100_000
"""`predict --file`: a longer line is cut to this many characters (the model reads only its
first `max_length` tokens anyway)."""
PREDICT_BATCH = 32
COMPARE_FILES = ("compare.md", "compare.html", "compare.png")
"""What `fedtune compare` writes; it never replaces one that is already there."""


class UsageError(FedtuneError):
    """Bad command-line arguments."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt of the main thread (exit 143)."""

    exit_code = 128 + signal.SIGTERM


class _Parser(argparse.ArgumentParser):
    """argparse, its errors raised as UsageError: one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("fedtune").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} -h)")


def _count(text: str) -> int:
    """`--nodes`: an integer from 0 to MAX_CERT_NODES."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_CERT_NODES:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_CERT_NODES}, not {value}")
    return value


def _at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
    return value


def _positive(text: str) -> int:
    """An integer of at least 1."""
    return _at_least(1, text)


def _non_negative(text: str) -> int:
    """An integer of at least 0."""
    return _at_least(0, text)


def _port(text: str) -> int:
    """`--port`: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value}")
    return value


def _parser() -> argparse.ArgumentParser:
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
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a scenario key, e.g. --set federation.rounds=5 (repeatable)",
        )
        cmd.add_argument(
            "--output",
            help="run directory (default runs/<name>-<timestamp>): new, or empty",
        )
        cmd.add_argument("--quiet", action="store_true", help="no progress output")
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
        "--nodes", type=_count, default=2, help="SuperNode key pairs (default 2, at most 10000)"
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
    shards.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    audit = sub.add_parser(
        "audit",
        help="attack a finished simulated run: token recovery from a client's update and "
        "membership inference on the final model (audit.json)",
    )
    audit.add_argument("run_dir")
    audit.add_argument(
        "--batch-size", type=_positive, help="texts per attacked update (default: the run's)"
    )
    audit.add_argument("--batches", type=_positive, default=8, help="updates attacked (default 8)")
    audit.add_argument(
        "--inversion-steps",
        type=_non_negative,
        default=100,
        help="gradient-matching steps per attacked update (default 100; 0: word rows only)",
    )
    audit.add_argument(
        "--max-examples",
        type=_positive,
        default=500,
        help="members and as many non-members for membership inference (default 500)",
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
        help="API keys, one per line: /predict and /metrics then need "
        "'Authorization: Bearer KEY' (or 'X-API-Key: KEY'); /health stays open",
    )
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="server processes (each loads the model)"
    )
    return parser


# ------------------------------------------------------------------ using a model


def _check_text_file(name: str) -> Path:
    """`--file`: an existing, readable, UTF-8 regular file (checked in one bounded pass, so
    that a bad byte near the end stops the command before any output)."""
    path = Path(name)
    if not path.exists():
        raise UsageError(f"--file {name!r}: no such file")
    if path.is_dir():
        raise UsageError(f"--file {name!r}: a directory, not a file of texts")
    if not path.is_file():  # /dev/zero, a FIFO: no end to read to
        raise UsageError(f"--file {name!r}: not a regular file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise UsageError(
                        f"--file {name!r}: not UTF-8 text (byte {offset + exc.start}); "
                        "save it as UTF-8"
                    ) from None
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UsageError(f"--file {name!r}: not UTF-8 text (it ends mid-character)") from None
    except OSError as exc:
        raise UsageError(f"--file {name!r}: cannot read: {exc.strerror or exc}") from None
    return path


def _file_texts(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file that are not blank, one at a time, each cut to
    MAX_TEXT_CHARS characters."""
    with path.open(encoding="utf-8", newline=None) as handle:
        while line := handle.readline(MAX_TEXT_CHARS):
            if not line.endswith("\n"):  # cut: skip the rest of this line
                rest = line
                while rest and not rest.endswith("\n"):
                    rest = handle.readline(MAX_TEXT_CHARS)
            text = line.rstrip("\r\n")
            if text.strip():
                yield text


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


T = TypeVar("T")
Example = tuple[str, dict | None]
"""A text to label and, from a .jsonl file, its tabular features (the row's other keys)."""


def _jsonl_examples(path: Path) -> Iterator[Example]:
    """`--file rows.jsonl`: one JSON object per line, its `text` and feature columns."""
    for number, line in enumerate(_file_texts(path), 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UsageError(f"--file {str(path)!r} line {number}: not a JSON object with a text")
        yield row.pop("text"), row


def _predict(args: argparse.Namespace) -> int:
    """Label the argument texts, then the file's lines (a .jsonl file's rows with their
    features), printing each batch as it is done."""
    path = _check_text_file(args.file) if args.file else None
    if not args.texts and path is None:
        raise UsageError("give texts as arguments or --file FILE")
    from fedtune.serve import app as serving

    predictor = serving.Predictor(args.model_dir)

    def examples() -> Iterator[Example]:
        yield from ((text, None) for text in args.texts)
        if path is not None and path.suffix == ".jsonl":
            yield from _jsonl_examples(path)
        elif path is not None:
            yield from ((text, None) for text in _file_texts(path))

    printed = 0
    for batch in _batches(examples(), PREDICT_BATCH):
        texts, rows = [text for text, _ in batch], [row for _, row in batch]
        features = None if all(row is None for row in rows) else [row or {} for row in rows]
        for text, pred in zip(texts, predictor.predict(texts, features), strict=True):
            print(f"{pred['label']}\t{pred['score']:.4f}\t{text}")
        sys.stdout.flush()
        printed += len(batch)
    if not printed:
        raise UsageError(f"--file {args.file!r}: no texts (every line is empty)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedtune.serve.export import export_quantized

    report = export_quantized(Path(args.model_dir), Path(args.out_dir), args.quantize)
    line = (
        f"{args.quantize} export: {args.out_dir} ({report['int8_mb']:.1f} MB, fp32 "
        f"{report['fp32_mb']:.1f} MB: {report['int8_mb'] / report['fp32_mb']:.2f}x)"
    )
    if "int8_accuracy" in report:
        change = 100 * (report["int8_accuracy"] - report["fp32_accuracy"])
        line += (
            f"; test accuracy {report['int8_accuracy']:.3f} vs fp32 "
            f"{report['fp32_accuracy']:.3f} ({change:+.1f} points, "
            f"{report['test_examples']} texts of the run's test split)"
        )
    else:
        line += "; no accuracy: MODEL is not a simulated run's model/ directory"
    print(line)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from fedtune.serve import app as serving

    serving.serve(
        args.model_dir,
        args.host,
        args.port,
        api_key_file=args.api_key_file,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        workers=args.workers,
    )
    return 0


# ------------------------------------------------------------------ runs


def _scenario(args: argparse.Namespace, resume: str | None = None) -> Scenario:
    """The validated scenario of run/centralized/local/deploy, its output directory checked."""
    overrides = dict(parse_override(item) for item in args.overrides)
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
        f"{_headline(final, summary.get('majority_class'))}, outputs in {summary['run_dir']}"
    )
    return 0


HEADLINE_NAMES = {"auc": "AUC", "macro_f1": "macro-F1", "accuracy": "accuracy"}


def _headline(final: dict, majority: dict | None) -> str:
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


def _run(args: argparse.Namespace) -> int:
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
    from fedtune.runs.checkpoint import checkpoint_dir  # loaded already: the run had started

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


def _centralized(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import simulation

    return _finished(simulation.run_centralized(scenario, args.quiet))


def _local(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import simulation

    return _finished(simulation.run_local_only(scenario, args.quiet))


def _deploy(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    from fedtune.launch import deploy

    try:
        summary = deploy.deploy(scenario, args.insecure, args.quiet, worker=args.worker)
    except KeyboardInterrupt as exc:
        print("fedtune: interrupted; the processes it started were stopped", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    return _finished(summary)


def _worker(args: argparse.Namespace) -> int:
    from fedtune.federation.client import worker

    path = Path(args.socket).absolute()
    worker.serve(path, lambda: print(f"fedtune worker: listening on {path}", flush=True))
    return 0


# ------------------------------------------------------------------ files for deployments

LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
"""An ASCII host name (what a certificate's DNS SAN holds)."""


def _certs(args: argparse.Namespace) -> int:
    from fedtune.launch.certs import make_certs

    for name in args.names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not HOST_NAME.match(name):
                raise UsageError(f"--name {name[:80]!r}: not a host name or IP address") from None
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{args.out_dir}: a file, not a directory")
    targets = ["ca.crt", "ca.key", "server.pem", "server.key", "superexec.secret"]
    targets += [f"node-{i}{ext}" for i in range(args.nodes) for ext in ("", ".pub")]
    existing = [name for name in targets if (out / name).exists()]
    if existing:
        raise UsageError(
            f"{args.out_dir}: already holds {existing[0]}; fedtune never overwrites keys "
            "(choose a new directory)"
        )
    try:
        for path in make_certs(out, args.nodes, tuple(args.names)):
            print(path)
    except OSError as exc:
        raise UsageError(f"{args.out_dir}: cannot write: {exc.strerror or exc}") from None
    return 0


def _shards(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(item) for item in args.overrides)
    scenario = load_scenario(args.scenario, overrides)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{args.out_dir}: a file, not a directory")
    for pid in range(scenario.partition.num_clients):
        target = out / f"node-{pid}" / "data.jsonl"
        if target.exists() or target.parent.is_file():
            raise UsageError(f"{target}: already exists; choose a new directory")
    from fedtune.launch.deploy import write_node_files

    try:
        for path in write_node_files(scenario, out):
            print(path)
    except OSError as exc:
        raise UsageError(f"{args.out_dir}: cannot write: {exc.strerror or exc}") from None
    return 0


# ------------------------------------------------------------------ reports


def _report_call(call: Callable[[], Path], what: str) -> int:
    """Run a report writer: a run directory it cannot read is its RunDirError; one whose
    files lack what a report needs, or an output it cannot write, is one line too."""
    from fedtune.runs.report import RunDirError

    try:
        print(call())
    except FedtuneError:
        raise
    except OSError as exc:
        raise RunDirError(f"{what}: cannot write: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise RunDirError(
            f"{what}: incomplete or damaged run files ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})"
        ) from None
    return 0


def _audit(args: argparse.Namespace) -> int:
    from fedtune.audit.privacy import AUDIT_FILE, audit_run

    result = audit_run(
        Path(args.run_dir), args.batch_size, args.batches, args.max_examples, args.inversion_steps
    )
    inv, mem = result["inversion"], result["membership"]
    epsilon = "no DP" if result["epsilon"] is None else f"epsilon {result['epsilon']:.2f}"
    matched = inv.get("gradient_matching")
    matching = f", gradient matching F1 {matched['f1']:.3f}" if matched else ""
    print(
        f"audit of {args.run_dir} ({epsilon}, peft {result['peft']}, codec {result['codec']}): "
        f"token recovery F1 {inv['f1']:.3f} (precision {inv['precision']:.3f}, recall "
        f"{inv['recall']:.3f}, ROUGE-L {inv['rouge_l']:.3f}, batch size {inv['batch_size']})"
        f"{matching}; membership AUC {mem['auc']:.3f}, "
        f"TPR {mem['tpr_at_1pct_fpr']:.3f} at 1% FPR; {Path(args.run_dir) / AUDIT_FILE}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedtune.runs import report

    return _report_call(lambda: report.write_report(Path(args.run_dir)), args.run_dir)


def _compare(args: argparse.Namespace) -> int:
    run_dirs = [Path(name) for name in args.run_dirs]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.output or f"runs/compare-{stamp}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {args.output}: a file, not a directory")
    for name in COMPARE_FILES:
        if (out / name).exists():
            raise UsageError(f"{out / name}: already exists; choose another --output")
    from fedtune.runs import report

    return _report_call(lambda: report.compare(run_dirs, out), str(out))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "centralized": _centralized,
    "local": _local,
    "deploy": _deploy,
    "worker": _worker,
    "certs": _certs,
    "shards": _shards,
    "report": _report,
    "compare": _compare,
    "audit": _audit,
    "predict": _predict,
    "export": _export,
    "serve": _serve,
}
"""Command name -> handler (its argparse namespace -> exit code)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return COMMANDS[args.command](args)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except FedtuneError as exc:
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("fedtune: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:  # `fedtune predict ... | head`: the reader left; stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
