"""`fedtune certs` and `shards`: the files a deployment needs."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from pathlib import Path

from fedtune.cli.parser import UsageError
from fedtune.config import (
    load_scenario,
    parse_override,
)

LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
"""An ASCII host name (what a certificate's DNS SAN holds)."""


def _new_files(out_dir: str, names: list[str]) -> tuple[Path, str | None]:
    """`out_dir` as a path, and the first of `names` (relative paths) that something, a link
    included, already holds, or whose folder is a link or a file (None when all are free).
    `out_dir` itself must be a directory or missing: a link or a file is refused."""
    out = Path(out_dir)
    if out.is_symlink():
        raise UsageError(f"{out_dir}: a symbolic link; fedtune writes only into a real directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out_dir}: a file, not a directory")
    for name in names:
        path = out / name
        folder = path.parent
        if os.path.lexists(path) or folder.is_symlink() or folder.is_file():
            return out, name
    return out, None


def _cannot_write(out_dir: str, exc: OSError) -> UsageError:
    """One line for a file that could not be created (a link planted meanwhile, a full disk)."""
    return UsageError(f"{exc.filename or out_dir}: cannot write: {exc.strerror or exc}")


def certs_command(args: argparse.Namespace) -> int:
    from fedtune.launch.certs import make_certs

    for name in args.names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not HOST_NAME.match(name):
                raise UsageError(f"--name {name[:80]!r}: not a host name or IP address") from None
    targets = ["ca.crt", "ca.key", "server.pem", "server.key", "superexec.secret"]
    targets += [f"node-{i}{ext}" for i in range(args.nodes) for ext in ("", ".pub")]
    out, existing = _new_files(args.out_dir, targets)
    if existing:
        raise UsageError(
            f"{args.out_dir}: already holds {existing}; fedtune never overwrites keys "
            "(choose a new directory)"
        )
    try:
        for path in make_certs(out, args.nodes, tuple(args.names)):
            print(path)
    except OSError as exc:
        raise _cannot_write(args.out_dir, exc) from None
    return 0


def shards_command(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(item) for item in args.overrides)
    scenario = load_scenario(args.scenario, overrides)
    targets = [f"node-{pid}/data.jsonl" for pid in range(scenario.partition.num_clients)]
    out, existing = _new_files(args.out_dir, targets)
    if existing:
        raise UsageError(f"{out / existing}: already exists; choose a new directory")
    from fedtune.launch.deploy import write_node_files

    try:
        for path in write_node_files(scenario, out):
            print(path)
    except OSError as exc:
        raise _cannot_write(args.out_dir, exc) from None
    return 0
