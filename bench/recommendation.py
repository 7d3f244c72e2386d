"""Recommendation benchmark: MovieLens-100K like prediction (`scenarios/recommendation.yaml`).

One table, every row on the server's test split (each user's last 2 ratings in time): the
popularity baseline (each item's like-rate in the training rows), a tabular-only model
(scikit-learn's gradient boosting on the scenario's tabular features, centralized), the
text-only BERT (federated) and the text + tabular fusion BERT (federated and centralized),
and the fusion model trained by each client alone (local-only). Metrics: AUC (the headline),
log-loss, accuracy, and NDCG@10 / HR@10 of each user's held-out items ranked by score.

    python bench/recommendation.py            # resumable: recorded commands are not rerun
    python bench/recommendation.py --quick    # 600 training rows, 1 round: a smoke run
    python bench/recommendation.py --fresh    # rerun every command

Writes bench/recommendation[-quick].json and .md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from commands import (  # noqa: E402
    Cache,
    Invocation,
    RunFailed,
    client_error_rounds,
    read_run,
    run_dir_for,
    run_fedtune,
)

SCENARIO = "recommendation"
QUICK = {"data.max_samples": 600, "federation.rounds": 1}
TEXT_ONLY = {"data.tabular": "null"}
COMMANDS: dict[str, tuple[str, dict]] = {
    "fusion BERT, federated": ("run", {}),
    "fusion BERT, centralized": ("centralized", {}),
    "text-only BERT, federated": ("run", TEXT_ONLY),
    "fusion BERT, local-only (mean over clients)": ("local", {}),
}
METRICS = ("auc", "log_loss", "accuracy", "ndcg_at_10", "hit_rate_at_10")
TARGETS = (
    ("fusion BERT, federated", "fusion BERT, centralized", -1.0, "within 1 pt of AUC"),
    ("fusion BERT, federated", "text-only BERT, federated", 1.0, "at least 1 pt of AUC better"),
    ("fusion BERT, federated", "tabular-only (gradient boosting)", 1.0, "at least 1 pt better"),
    ("fusion BERT, federated", "popularity (item like-rate)", 3.0, "at least 3 pts better"),
)


def scenario(quick: bool):
    from fedtune.config import load_scenario

    return load_scenario(SCENARIO, QUICK if quick else None)


def scored(y: np.ndarray, p_like: np.ndarray, groups: list) -> dict:
    """The table's metrics for probabilities of `like` (label 1)."""
    from fedtune.modeling.metrics import binary_metrics, ranking_metrics

    probs = np.stack([1 - p_like, p_like], axis=1)
    return {
        **binary_metrics(y, probs),
        "accuracy": float(((p_like >= 0.5) == y).mean()),
        **ranking_metrics(y, p_like, groups),
    }


def baselines(quick: bool) -> dict[str, dict]:
    """Popularity and gradient boosting on the scenario's own training rows and test split
    (and boosting on every training row, for what more data buys it)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from fedtune.data.corpus import build_federated_data

    s = scenario(quick)
    fed = build_federated_data(s)
    full = build_federated_data(
        s.model_copy(update={"data": s.data.model_copy(update={"max_samples": None})})
    )
    pool, test = fed.pool.to_pandas(), fed.test.to_pandas()
    y, groups = test["label"].to_numpy(), test["user_id"].tolist()
    rate = pool.groupby("item_id")["label"].agg(["sum", "count"])
    prior, m = pool["label"].mean(), 5.0  # a smoothed like-rate: unseen items get the mean
    smoothed = (rate["sum"] + m * prior) / (rate["count"] + m)
    popularity = test["item_id"].map(smoothed).fillna(prior).to_numpy()
    tabular = s.data.tabular

    def features(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[list(tabular.numeric)].astype(float)
        for column, values in tabular.categorical.items():
            out[column] = pd.Categorical(frame[column], categories=list(values))
        return out

    rows: dict[str, dict] = {"popularity (item like-rate)": scored(y, popularity, groups)}
    for name, train in (
        ("tabular-only (gradient boosting)", pool),
        ("tabular-only (gradient boosting), all training rows", full.pool.to_pandas()),
    ):
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
        model.fit(features(train), train["label"])
        rows[name] = scored(y, model.predict_proba(features(test))[:, 1], groups)
        rows[name]["rows"] = len(train)
    return rows


def fedtune_rows(quick: bool, cache: Cache, work: Path) -> dict[str, dict]:
    rows = {}
    for name, (command, overrides) in COMMANDS.items():
        inv = Invocation.make(command, SCENARIO, {**(QUICK if quick else {}), **overrides})
        key, run_dir = inv.key(quick), run_dir_for(work, inv, quick)
        if not cache.usable(key):
            print(f"$ {inv.shell(run_dir)}", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.monotonic()
            try:
                run_fedtune(inv.argv(run_dir))
                record = {**read_run(run_dir), "seconds": round(time.monotonic() - started, 1)}
                failed = client_error_rounds(record)
                if failed:  # a killed worker: not a measurement, rerun it next time
                    record = {"error": f"clients failed in round(s) {failed}"}
            except RunFailed as exc:
                record = {"error": str(exc)}
            cache.put(key, {**record, "command": inv.shell(run_dir)})
        record = cache.get(key)
        rows[name] = {"command": record["command"], **record.get("final", {})}
        if "error" in record:
            rows[name]["error"] = record["error"]
    return rows


def markdown(rows: dict[str, dict], quick: bool) -> str:
    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "# Recommendation benchmark (`bench/recommendation.py`)",
        "",
        f"Mode: {'quick' if quick else 'full'}. MovieLens-100K like (rating >= 4) prediction, "
        "`scenarios/recommendation.yaml`; test split: each user's last 2 ratings in time.",
        "",
        "| model | AUC | log-loss | accuracy | NDCG@10 | HR@10 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        values = (
            [cell(row, k) for k in METRICS] if "error" not in row else [row["error"]] + [""] * 4
        )
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    lines += [
        "",
        "## Targets (AUC points)",
        "",
        "| comparison | target | gap | result |",
        "| --- | --- | --- | --- |",
    ]
    for a, b, points, text in TARGETS:
        if "auc" not in rows.get(a, {}) or "auc" not in rows.get(b, {}):
            lines.append(f"| {a} vs {b} | {text} | - | not run |")
            continue
        gap = 100 * (rows[a]["auc"] - rows[b]["auc"])
        met = gap >= points
        lines.append(f"| {a} vs {b} | {text} | {gap:+.1f} | {'met' if met else 'missed'} |")
    lines += ["", "## Commands", ""]
    lines += [f"- `{row['command']}`" for row in rows.values() if "command" in row]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on small data")
    parser.add_argument("--fresh", action="store_true", help="rerun recorded commands")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stem = "recommendation-quick" if args.quick else "recommendation"
    cache = Cache(HERE / f"{stem}.json", fresh=args.fresh)
    work = HERE.parent / "runs" / stem
    rows = {**baselines(args.quick), **fedtune_rows(args.quick, cache, work)}
    cache.data["table"] = rows
    cache.save()
    (HERE / f"{stem}.md").write_text(markdown(rows, args.quick))
    print((HERE / f"{stem}.md").read_text())
    print(shlex.join(["written:", f"bench/{stem}.md"]))


if __name__ == "__main__":
    main()
