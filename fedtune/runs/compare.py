"""`fedtune compare`: several finished runs side by side, and whether federating was worth
it for each client against training alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from fedtune.atomic import write_atomic
from fedtune.modeling.metrics import CENTRAL_KEYS
from fedtune.runs.cost import cost_cell, cost_to_target, headline_metric
from fedtune.runs.report import (
    METRIC_LABELS,
    html_page,
    markdown_table,
    metric_cells,
    metric_header,
    plot_cost,
    read_run,
    save_figure,
    task_keys,
)

CLIENT_KEYS = ("seed", "data", "partition")
"""Scenario sections that fix the clients and their validation splits."""


def _worth_it(local: dict, fed: dict, names: tuple[str, str]) -> str | None:
    """Per client, trained alone (a local-only run) vs the federated model, on the client's
    own validation split (the federated run's last evaluation of it) and on the test split:
    the "is federating worth it for me" table. None unless both runs have the same clients."""
    scenarios = local.get("scenario"), fed.get("scenario")
    if None in scenarios or any(scenarios[0].get(k) != scenarios[1].get(k) for k in CLIENT_KEYS):
        return None
    evaluated = {
        c["partition-id"]: c
        for r in fed["rounds"]
        for c in r.get("clients", {}).get("evaluate", [])
        if "eval_accuracy" in c and "partition-id" in c
    }
    rows, better = [], 0
    for c in local["summary"]["clients"]:
        alone = c["val"].get("accuracy")
        together = evaluated.get(c["partition_id"], {}).get("eval_accuracy")
        gain = None if None in (alone, together) else together - alone
        better += gain is not None and gain > 0
        rows.append(
            [
                c["name"],
                alone,
                together,
                gain,
                c["test"]["accuracy"],
                fed["summary"]["final"]["accuracy"],
            ]
        )
    return "\n\n".join(
        [
            f"## Is federating worth it? {names[0]} vs {names[1]}",
            f"Federating gives {better} of {len(rows)} clients a better model on their own "
            "validation split.",
            markdown_table(
                [
                    "client",
                    "own val accuracy: alone",
                    "federated",
                    "gain",
                    "test accuracy: alone",
                    "federated",
                ],
                rows,
            ),
        ]
    )


def _worth_it_tables(runs: list[dict], names: list[str]) -> list[str]:
    """`_worth_it` for every local-only run and every federated run of the same clients."""
    tables = []
    for local, local_name in zip(runs, names, strict=True):
        for fed, fed_name in zip(runs, names, strict=True):
            if (local["summary"]["mode"], fed["summary"]["mode"]) == ("local", "federated"):
                table = _worth_it(local, fed, (local_name, fed_name))
                tables += [table] if table else []
    return tables


def default_target(runs: list[dict]) -> tuple[str, float] | None:
    """The centralized baseline's final headline value, when one of the runs is one: the
    stronger of its same-budget and its converged run (`--converged`)."""
    for run in runs:
        summary = run["summary"]
        if summary["mode"] == "centralized":
            metric = headline_metric(summary)
            finals = [summary["final"], summary.get("converged", {}).get("final", {})]
            values = [final[metric] for final in finals if final.get(metric) is not None]
            return (metric, max(values)) if values else None
    return None


def run_cost(run: dict, default: tuple[str, float] | None) -> dict | None:
    """A run's cost to its own target (`federation.target`), else to `default`."""
    if run["summary"]["mode"] == "local":
        return None
    own = run["summary"].get("cost_to_target")
    if own is not None or default is None:
        return own
    return cost_to_target(run["rounds"], *default)


def _target_cell(cost: dict | None) -> str:
    return (
        "-"
        if cost is None
        else f"{METRIC_LABELS.get(cost['metric'], cost['metric'])} {cost['target']:.3f}"
    )


def compare(run_dirs: list[Path], out_dir: Path) -> Path:
    """Overlay the runs' test curves (a local-only run's mean as a dashed line), tabulate
    final metrics, bytes and time, and, for a local-only and a federated run of the same
    clients, compare them per client (`_worth_it`)."""
    runs = [read_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{r['summary']['scenario']} ({r['summary']['mode']}) [{r['dir'].name}]" for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0))
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        local = run["summary"]["mode"] == "local"
        for ax, key in zip(axes, CENTRAL_KEYS, strict=True):
            if local:  # no rounds: the clients' mean after training alone
                ax.axhline(run["summary"]["final"][key], ls="--", color=f"C{i}", label=name)
            else:
                x = [r["round"] for r in run["rounds"]]
                ax.plot(x, [r[key] for r in run["rounds"]], marker="o", color=f"C{i}", label=name)
            ax.set(xlabel="round", title=f"test {key}")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, out_dir / "compare.png")
    plot_cost(list(zip(names, runs, strict=True)), out_dir / "compare_cost.png")
    default = default_target(runs)
    costs = [run_cost(r, default) for r in runs]
    extra = task_keys([r["summary"]["final"] for r in runs])
    rows = [
        [
            name,
            None if r["summary"]["mode"] == "local" else r["summary"]["rounds_completed"],
            *metric_cells(r["summary"]["final"], extra),
            r["summary"]["wall_seconds"],
            r["summary"].get("bytes_up_total", 0),
            _target_cell(cost),
            cost_cell(cost),
        ]
        for name, r, cost in zip(names, runs, costs, strict=True)
    ]
    text = (
        "\n\n".join(
            [
                "# fedtune comparison",
                markdown_table(
                    [
                        "run",
                        "rounds",
                        *metric_header(extra),
                        "wall s",
                        "bytes up",
                        "target",
                        "to target",
                    ],
                    rows,
                ),
                "![compare](compare.png)",
                "![cost](compare_cost.png)",
                *_worth_it_tables(runs, names),
            ]
        )
        + "\n"
    )
    write_atomic(out_dir / "compare.md", text)
    write_atomic(out_dir / "compare.html", html_page(text, out_dir, "fedtune comparison"))
    return out_dir / "compare.md"
