"""Looking at a finished run: its figures and `fedtune report` (the comparison of several
is `fedtune.runs.compare`)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedtune.atomic import write_atomic  # noqa: E402
from fedtune.errors import FedtuneError, first_line
from fedtune.modeling.metrics import CENTRAL_KEYS, TASK_KEYS  # noqa: E402
from fedtune.runs.cost import cost_cell, headline_metric, spent_by_round  # noqa: E402

FIGURE_SIZE = (7.0, 4.0)
DPI = 100


class RunDirError(FedtuneError, ValueError):
    """A directory is not a fedtune run."""


def read_run(run_dir: Path) -> dict:
    """summary.json, the metrics.jsonl lines and (if present) partition.json and the
    scenario, each checked to be JSON objects: RunDirError (one line) for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: a file, not a run directory")
    optional = [
        name for name in ("partition", "scenario", "audit") if (run_dir / f"{name}.json").exists()
    ]
    run: dict = {"dir": run_dir}
    for key, file in (
        ("summary", "summary.json"),
        ("rounds", "metrics.jsonl"),
        *((name, f"{name}.json") for name in optional),
    ):
        if not (run_dir / file).is_file():
            raise RunDirError(f"{run_dir}: not a fedtune run (no {file})")
        try:
            text = (run_dir / file).read_text(encoding="utf-8")
            if key == "rounds":
                run[key] = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                run[key] = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else first_line(exc)
            raise RunDirError(f"{run_dir}: {file} is damaged ({detail})") from None
        values = run[key] if key == "rounds" else [run[key]]
        if not all(isinstance(value, dict) for value in values):
            raise RunDirError(f"{run_dir}: {file} is damaged (not JSON objects)")
    return run


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_curves(run: dict, path: Path) -> Path:
    """Accuracy, macro-F1 and loss per round: centralized test split and federated evaluation."""
    rounds = run["rounds"]
    x = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGURE_SIZE)
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        left.plot(x, [r[key] for r in rounds], marker="o", label=f"test {label}")
        fed = [(r["round"], r["federated_evaluate"].get(f"eval_{key}")) for r in rounds]
        fed = [(i, v) for i, v in fed if v is not None]
        if fed:
            left.plot(*zip(*fed, strict=True), marker="x", ls="--", label=f"clients {label}")
    right.plot(x, [r["loss"] for r in rounds], marker="o", label="test loss")
    train = [
        (r["round"], _mean(c.get("train_loss") for c in r["clients"]["train"])) for r in rounds
    ]
    train = [(i, v) for i, v in train if v is not None]
    if train:
        right.plot(*zip(*train, strict=True), marker="x", ls="--", label="client train loss")
    for ax, title in ((left, "quality"), (right, "loss")):
        ax.set(xlabel="round", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_cost(runs: list[tuple[str, dict]], path: Path) -> Path | None:
    """Each run's headline metric against the cumulative bytes (up + down) and wall seconds
    it had spent, one line per (name, run); None when no run has rounds."""
    runs = [(name, run) for name, run in runs if run["summary"].get("mode") != "local"]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE)
    for i, (name, run) in enumerate(runs):
        metric = headline_metric(run["summary"])
        values = [r.get(metric) for r in run["rounds"]]
        spent = spent_by_round(run["rounds"])
        for ax, key, scale in ((axes[0], "bytes", 1e6), (axes[1], "wall_seconds", 1.0)):
            ax.plot([s[key] / scale for s in spent], values, marker="o", color=f"C{i}", label=name)
        target = run["summary"].get("cost_to_target")
        if target:
            for ax in axes:
                ax.axhline(target["target"], ls=":", color=f"C{i}")
    for ax, xlabel in zip(axes, ("MB sent (up + down)", "wall seconds"), strict=True):
        ax.set(xlabel=xlabel, ylabel="headline metric", title=f"cost: {xlabel}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def _mean(values: object) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plot_client_spread(run: dict, path: Path) -> Path | None:
    """Per-client validation accuracy per round (box plot): who the global model serves."""
    data = [
        (r["round"], [c["eval_accuracy"] for c in r["clients"]["evaluate"] if "eval_accuracy" in c])
        for r in run["rounds"]
    ]
    data = [(i, accs) for i, accs in data if accs]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    ax.boxplot([accs for _, accs in data], tick_labels=[str(i) for i, _ in data])
    ax.set(xlabel="round", ylabel="client validation accuracy", title="per-client accuracy")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


NAMED_CLIENT_ROWS = 40
"""The partition heat map names up to this many clients, one row each."""


def plot_partition(run: dict, path: Path) -> Path | None:
    """Heat map of label counts per client."""
    table = run.get("partition")
    if not table:
        return None
    labels = table["labels"]
    counts = [[c["label_counts"][label] for label in labels] for c in table["clients"]]
    names = [c["name"] for c in table["clients"]]
    rows = min(len(names), NAMED_CLIENT_ROWS)  # beyond that, a fixed-size map of indices
    fig, ax = plt.subplots(figsize=(FIGURE_SIZE[0], max(2.5, 0.35 * rows + 1.5)))
    image = ax.imshow(counts, aspect="auto", cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels)
    if len(names) <= NAMED_CLIENT_ROWS:
        ax.set_yticks(range(len(names)), names)
    else:
        ax.set_ylabel("client (partition id)")
    if len(names) * len(labels) <= 200:
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="examples")
    ax.set_title("label distribution per client")
    return save_figure(fig, path)


def plot_series(run: dict, keys: tuple[str, ...], ylabel: str, path: Path) -> Path | None:
    """Per-round scalar series stored at the top of each metrics line (bytes, epsilon...)."""
    rounds = [r for r in run["rounds"] if any(r.get(k) for k in keys)]
    if not rounds:
        return None
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    for key in keys:
        ax.plot(
            [r["round"] for r in rounds], [r.get(key, 0) for r in rounds], marker="o", label=key
        )
    ax.set(xlabel="round", ylabel=ylabel, title=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_membership_roc(run: dict, path: Path) -> Path | None:
    """`fedtune audit`'s membership attack: its ROC curve against chance (None: no audit)."""
    if "audit" not in run:
        return None
    member = run["audit"]["membership"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(
        member["roc"]["fpr"], member["roc"]["tpr"], label=f"loss attack (AUC {member['auc']:.3f})"
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="membership inference")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_local(run: dict, path: Path) -> Path:
    """A local-only run: each client's accuracy on its own validation split and on the
    server's test split, trained alone."""
    clients = run["summary"]["clients"]
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    for offset, split, label in (
        (-0.2, "val", "own validation split"),
        (0.2, "test", "test split"),
    ):
        accuracies = [c[split].get("accuracy", 0.0) for c in clients]
        ax.bar([i + offset for i in range(len(clients))], accuracies, width=0.4, label=label)
    ax.set_xticks(range(len(clients)), [c["name"] for c in clients])
    ax.set(ylabel="accuracy", title="each client trained alone")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def make_figures(run_dir: Path) -> list[Path]:
    """Write every figure that the run's data supports into `run_dir/figures/`."""
    run = read_run(run_dir)
    out = Path(run_dir) / "figures"
    out.mkdir(exist_ok=True)
    if run["summary"].get("mode") == "local":
        made = [plot_local(run, out / "clients.png"), plot_partition(run, out / "partition.png")]
        return [p for p in made if p is not None]
    made = [
        plot_curves(run, out / "curves.png"),
        plot_client_spread(run, out / "client_accuracy.png"),
        plot_partition(run, out / "partition.png"),
        plot_series(run, ("bytes_up", "bytes_down"), "bytes per round", out / "bytes.png"),
        plot_series(
            run, ("epsilon", "dp_sgd_epsilon"), "privacy spent (epsilon)", out / "epsilon.png"
        ),
        plot_membership_roc(run, out / "membership_roc.png"),
        plot_cost([(run["summary"]["scenario"], run)], out / "cost.png"),
    ]
    return [p for p in made if p is not None]


METRIC_LABELS = {
    "macro_f1": "macro-F1",
    "auc": "AUC",
    "log_loss": "log-loss",
    "ndcg_at_10": "NDCG@10",
    "hit_rate_at_10": "HR@10",
}


def task_keys(finals: list[dict]) -> list[str]:
    """The task metrics (AUC, ranking...) that some of the runs measured, in TASK_KEYS order."""
    return [k for k in TASK_KEYS if any(k in final for final in finals)]


def metric_header(extra: list[str]) -> list[str]:
    """Column names of a run's final test metrics: the central ones, then `extra`."""
    return ["accuracy", "macro-F1", "loss", *(METRIC_LABELS[k] for k in extra)]


def metric_cells(final: dict, extra: list[str]) -> list:
    """The values under `metric_header` (None where a run did not measure one)."""
    return [*(final[k] for k in CENTRAL_KEYS), *(final.get(k) for k in extra)]


def _majority_line(majority: dict | None) -> list[str]:
    """The baseline a run must beat: always the test split's most common label."""
    if majority is None:
        return []
    why = {"macro_f1": " (the test split is imbalanced)", "auc": " (two labels)"}
    return [
        f"Majority class ({majority['label']}, {majority['share']:.1%} of the test split): "
        f"accuracy {majority['accuracy']:.4f}, macro-F1 {majority['macro_f1']:.4f}. "
        f"Headline metric: {METRIC_LABELS.get(majority['headline'], majority['headline'])}"
        f"{why.get(majority['headline'], '')}."
    ]


def _cost_line(cost: dict | None) -> list[str]:
    if cost is None:
        return []
    return [
        f"Cost to {METRIC_LABELS.get(cost['metric'], cost['metric'])} {cost['target']:.3f}: "
        f"{cost_cell(cost)} ({cost['client_seconds']:.0f} client seconds)."
    ]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def html_page(markdown_text: str, base: Path, title: str) -> str:
    """Self-contained HTML: the markdown rendered, PNGs inlined as data URIs."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline(match: re.Match) -> str:
        data = base64.b64encode((base / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
    style += "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """`report.md` and a self-contained `report.html` in the run directory."""
    run = read_run(run_dir)
    figures = make_figures(run_dir)
    summary, run_dir = run["summary"], Path(run_dir)
    final = summary["final"]
    extra = task_keys([final])
    parts = [
        f"# fedtune run: {summary['scenario']} ({summary['mode']})",
        markdown_table(
            ["clients", "rounds", *metric_header(extra), "wall s", "bytes up", "bytes down"],
            [
                [
                    summary["num_clients"],
                    summary["rounds_completed"],
                    *metric_cells(final, extra),
                    summary["wall_seconds"],
                    summary.get("bytes_up_total", 0),
                    summary.get("bytes_down_total", 0),
                ]
            ],
        ),
        *_majority_line(summary.get("majority_class")),
        *_cost_line(summary.get("cost_to_target")),
        *(_local_tables(summary) if summary["mode"] == "local" else []),
        "## Figures",
        *(f"![{p.stem}](figures/{p.name})" for p in figures),
    ]
    if "partition" in run:
        table = run["partition"]
        parts += [
            "## Partition",
            markdown_table(
                ["client", "examples", *table["labels"]],
                [
                    [c["name"], c["num_examples"], *c["label_counts"].values()]
                    for c in table["clients"]
                ],
            ),
        ]
    per_class = run["rounds"][-1].get("central", {}).get("per_class", {})
    classes = [k for k, v in per_class.items() if isinstance(v, dict)]
    if classes:
        parts += [
            "## Final classification report (server test split)",
            markdown_table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [
                        k,
                        *(per_class[k][m] for m in ("precision", "recall", "f1-score")),
                        int(per_class[k]["support"]),
                    ]
                    for k in classes
                ],
            ),
        ]
    if "audit" in run:
        parts += _audit_section(run["audit"])
    if "scenario" in run:
        parts += [
            "## Scenario",
            "```yaml\n" + yaml.safe_dump(run["scenario"], sort_keys=False) + "```",
        ]
    text = "\n\n".join(parts) + "\n"
    write_atomic(run_dir / "report.md", text)
    title = f"fedtune {summary['scenario']}"
    write_atomic(run_dir / "report.html", html_page(text, run_dir, title))
    return run_dir / "report.md"


def _audit_section(audit: dict) -> list[str]:
    """`fedtune audit`'s results beside the run's epsilon, PEFT method and codec: one row
    per inversion attack (word rows; gradient matching when it ran)."""
    inv, member = audit["inversion"], audit["membership"]
    attacks = {"word-embedding rows": inv}
    if "gradient_matching" in inv:
        matched = inv["gradient_matching"]
        attacks[f"gradient matching, {matched['steps']} steps"] = matched
    rows = [
        [
            "-" if audit["epsilon"] is None else audit["epsilon"],
            audit["peft"],
            audit["codec"],
            inv["batch_size"],
            attack,
            f"{found['precision']:.3f} / {found['recall']:.3f} / {found['f1']:.3f}",
            found["rouge_l"],
            member["auc"],
            member["tpr_at_1pct_fpr"],
        ]
        for attack, found in attacks.items()
    ]
    header = ["epsilon", "PEFT", "codec", "batch size", "inversion", "token P / R / F1"]
    return [
        "## Privacy audit (`fedtune audit`)",
        markdown_table([*header, "ROUGE-L", "membership AUC", "TPR at 1% FPR"], rows),
        f"Inversion: {inv['batches']} updates, {inv['view']}. Membership: "
        f"{member['members']} members against {member['non_members']} held-out texts.",
    ]


def _local_tables(summary: dict) -> list[str]:
    """A local-only run's per-client results (its `final` is their weighted mean)."""
    final = summary["final"]
    return [
        "## Each client trained alone",
        f"Each client trained a fresh model on its own training split only, for the examples "
        f"the federation has it train. Mean accuracy on the clients' own validation splits "
        f"{_cell(final['val_accuracy'])} (macro-F1 {_cell(final['val_macro_f1'])}); on the "
        f"server's test split {_cell(final['accuracy'])} (weighted by training examples).",
        markdown_table(
            [
                "client",
                "train examples",
                "examples trained",
                "own val accuracy",
                "own val macro-F1",
                "test accuracy",
                "test macro-F1",
            ],
            [
                [
                    c["name"],
                    c["num_examples"],
                    c["examples_trained"],
                    c["val"].get("accuracy"),
                    c["val"].get("macro_f1"),
                    c["test"]["accuracy"],
                    c["test"]["macro_f1"],
                ]
                for c in summary["clients"]
            ],
        ),
    ]
