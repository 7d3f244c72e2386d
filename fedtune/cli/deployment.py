"""`fedtune certs` and `shards`: the files a deployment needs."""

from __future__ import annotations

import argparse
import ipaddress
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


def certs_command(args: argparse.Namespace) -> int:
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


def shards_command(args: argparse.Namespace) -> int:
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
