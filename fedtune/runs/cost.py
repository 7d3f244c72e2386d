"""Cost to a target, the field's yardstick for federated training (FlowerTune's communication
budget, FedScale's time-to-accuracy): the first round whose headline metric reaches a target
value, and the wall seconds, client compute seconds and bytes spent until then."""

from __future__ import annotations

DEFAULT_HEADLINE = "accuracy"


def headline_metric(summary: dict) -> str:
    """The metric that separates learning from the majority class (see
    `fedtune.modeling.metrics.majority_baseline`); accuracy when it is not known."""
    return (summary.get("majority_class") or {}).get("headline", DEFAULT_HEADLINE)


def _client_seconds(line: dict) -> float:
    clients = line.get("clients") or {}
    return sum(
        c.get("client_seconds", 0.0)
        for kind in ("train", "evaluate")
        for c in clients.get(kind, [])
    )


def spent_by_round(rounds: list[dict]) -> list[dict]:
    """What a run had spent by the end of each of `rounds` (metrics.jsonl's lines, round 0
    first): wall seconds, client compute seconds (train and evaluate handlers), bytes up and
    down, cumulative."""
    spent = {"wall_seconds": 0.0, "client_seconds": 0.0, "bytes_up": 0, "bytes_down": 0}
    by_round = []
    for line in rounds:
        spent["wall_seconds"] += line.get("seconds", 0.0)
        spent["client_seconds"] += _client_seconds(line)
        spent["bytes_up"] += line.get("bytes_up", 0)
        spent["bytes_down"] += line.get("bytes_down", 0)
        by_round.append(
            {
                "wall_seconds": round(spent["wall_seconds"], 3),
                "client_seconds": round(spent["client_seconds"], 3),
                "bytes_up": spent["bytes_up"],
                "bytes_down": spent["bytes_down"],
                "bytes": spent["bytes_up"] + spent["bytes_down"],
            }
        )
    return by_round


def cost_to_target(rounds: list[dict], metric: str, target: float) -> dict:
    """What reaching `target` on `metric` took: the first of `rounds` at or above it and what
    had been spent by its end, or `reached: false` with what the whole run spent."""
    cost: dict = {"metric": metric, "target": target}
    by_round = spent_by_round(rounds)
    for line, spent in zip(rounds, by_round, strict=True):
        value = line.get(metric)
        if value is not None and value >= target:
            return {**cost, "reached": True, "round": line["round"], **spent}
    return {**cost, "reached": False, "round": None, **(by_round or spent_by_round([{}]))[-1]}


def size(num_bytes: float) -> str:
    """Bytes as a reader reads them: 18.0 KB, 90.9 MB, 1.25 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:,.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{num_bytes:.0f} B"


def cost_cell(cost: dict | None) -> str:
    """One table cell: `round 3, 412.0 s, 1.25 GB` or `not reached (...)`."""
    if cost is None:
        return "-"
    spent = f"{cost['wall_seconds']:.1f} s, {size(cost['bytes'])}"
    return f"round {cost['round']}, {spent}" if cost["reached"] else f"not reached ({spent})"
