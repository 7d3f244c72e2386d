"""`fedtune predict`, `export` and `serve`: using a trained model."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from fedtune.cli.parser import UsageError

MAX_TEXT_CHARS = 100_000
"""`predict --file`: a longer line is cut to this many characters (the model reads only its
first `max_length` tokens anyway)."""
PREDICT_BATCH = 32


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


def predict_command(args: argparse.Namespace) -> int:
    """Label the argument texts, then the file's lines (a .jsonl file's rows with their
    features), printing each batch as it is done."""
    path = _check_text_file(args.file) if args.file else None
    if not args.texts and path is None:
        raise UsageError("give texts as arguments or --file FILE")
    from fedtune.serve.predictor import Predictor

    predictor = Predictor(args.model_dir)

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


def export_command(args: argparse.Namespace) -> int:
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


def serve_command(args: argparse.Namespace) -> int:
    from fedtune.serve.app import serve

    serve(
        args.model_dir,
        args.host,
        args.port,
        api_key_file=args.api_key_file,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        workers=args.workers,
    )
    return 0
