"""`fedtune report`, `compare` and `audit`: looking at finished runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fedtune.cli.parser import UsageError
from fedtune.errors import FedtuneError

COMPARE_FILES = ("compare.md", "compare.html", "compare.png")
"""What `fedtune compare` writes; it never replaces one that is already there."""


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


def audit_command(args: argparse.Namespace) -> int:
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


def report_command(args: argparse.Namespace) -> int:
    from fedtune.runs import report

    return _report_call(lambda: report.write_report(Path(args.run_dir)), args.run_dir)


def compare_command(args: argparse.Namespace) -> int:
    run_dirs = [Path(name) for name in args.run_dirs]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.output or f"runs/compare-{stamp}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {args.output}: a file, not a directory")
    for name in COMPARE_FILES:
        if (out / name).exists():
            raise UsageError(f"{out / name}: already exists; choose another --output")
    from fedtune.runs.compare import compare

    return _report_call(lambda: compare(run_dirs, out), str(out))
