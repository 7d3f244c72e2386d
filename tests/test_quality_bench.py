"""bench/quality.py without training: fabricated run directories stand in for the fedtune
commands, so the cache, the resume, a failed command, the table and the plot are checked in
seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

MB = 1_000_000


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    spec.loader.exec_module(module)
    return module


def _option(argv: list[str], key: str) -> str | None:
    """The value of `--set key=...` in a command line."""
    for flag, item in zip(argv, argv[1:], strict=False):
        if flag == "--set" and item.startswith(f"{key}="):
            return item.split("=", 1)[1]
    return None


def fake_outcome(argv: list[str]) -> tuple[list[float], float]:
    """Accuracy after each round and bytes up per client per round, by kind of command."""
    command, scenario = argv[0], argv[1]
    rounds = int(_option(argv, "federation.rounds") or 3)
    if command == "centralized":
        return [0.2] + [0.8] * rounds, 0
    if command == "local":
        return [0.7], 0
    if scenario == "lora":
        return [0.2] + [0.795] * rounds, 0.6 * MB
    if _option(argv, "codec.kind") == "topk":
        # top-k 1% gets within 2 points only at round 5
        curve = [0.2, 0.6, 0.6, 0.6, 0.7, 0.79] + [0.8] * rounds
        return curve[: rounds + 1], 1.8 * MB
    strategy = _option(argv, "federation.strategy")
    if scenario == "label_skew":
        return [0.2] + [0.76 if strategy == "fedprox" else 0.7] * rounds, 90 * MB
    return [0.2] + [0.8] * rounds, 90 * MB


def write_run(run_dir: Path, argv: list[str]) -> None:
    """A run directory with what fedtune writes: summary.json, metrics.jsonl, partition."""
    accuracy, per_client = fake_outcome(argv)
    mode = {"run": "federated", "centralized": "centralized", "local": "local"}[argv[0]]
    history = [
        {"round": r, "accuracy": a, "macro_f1": a - 0.1, "loss": 1.0, "seconds": 1.0}
        for r, a in enumerate(accuracy)
    ]
    final = {k: history[-1][k] for k in ("accuracy", "macro_f1", "loss")}
    if mode == "local":
        history = []
        final |= {"val_accuracy": 0.75, "val_macro_f1": 0.6, "val_loss": 0.9}
    run_dir.mkdir(parents=True)
    summary = {"mode": mode, "final": final, "history": history, "wall_seconds": 1.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if mode == "federated":
        lines = []
        for h in history:
            clients = [{"bytes_up": per_client}] * 4 if h["round"] else []
            lines.append(
                {
                    **h,
                    "bytes_up": 4 * per_client if h["round"] else 0,
                    "clients": {"train": clients, "evaluate": []},
                }
            )
        (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if mode != "centralized":
        test = {"negative": 62, "neutral": 20, "positive": 18}
        (run_dir / "partition.json").write_text(json.dumps({"test": test}))


class FakeRunner:
    """Stands in for `fedtune ...`: writes a run directory, or fails for chosen commands."""

    def __init__(self, quality, fail: str | None = None) -> None:
        self.quality, self.fail, self.calls = quality, fail, []

    def __call__(self, argv: list[str]) -> None:
        self.calls.append(argv)
        if self.fail and self.fail in " ".join(argv):
            raise self.quality.RunFailed("exit 2: fedtune: error: simulated failure")
        write_run(Path(argv[argv.index("--output") + 1]), argv)


@pytest.fixture
def bench(quality, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The bench's outputs and run directories redirected into tmp_path."""
    paths = {
        "json": tmp_path / "quality.json",
        "md": tmp_path / "quality.md",
        "png": tmp_path / "quality_bytes.png",
        "work": tmp_path / "runs",
    }
    monkeypatch.setattr(quality, "output_paths", lambda quick: paths)
    # the rounds a scenario runs, without loading it (the shipped quickstart has 3)
    monkeypatch.setattr(quality, "_base_rounds", lambda s, o: int(o.get("federation.rounds", 3)))
    return paths


def rows_by_variant(paths: dict[str, Path], case: str) -> dict[str, dict]:
    table = json.loads(paths["json"].read_text())["table"]
    return {row["variant"]: row for row in table if row["case"] == case}


def test_full_run_table_verdicts_and_plot(quality, bench) -> None:
    runner = FakeRunner(quality)
    quality.main([], runner=runner)
    distinct = {
        inv.key(False)
        for case in quality.CASES
        for inv in quality.case_invocations(case, False).values()
    }
    assert len(runner.calls) == len(distinct)  # shared commands (full FT) run once

    lora = rows_by_variant(bench, "lora")
    assert lora["full FT"]["result"] == "reference"
    best = [row for row in lora.values() if row.get("best")]
    assert len(best) == 1 and best[0]["result"] == "met"  # -0.5 pts, 0.67% of the bytes
    assert best[0]["bytes_share"] == pytest.approx(0.6 / 90)
    assert lora["full FT"]["majority"] == {"label": "negative", "share": 0.62}
    assert lora["full FT"]["local"]["val_accuracy"] == 0.75

    iid = rows_by_variant(bench, "iid")["FedAvg (quickstart)"]
    assert (iid["result"], iid["detail"]) == ("met", "+0.0 / +0.0 pts")

    dirichlet = rows_by_variant(bench, "dirichlet")
    assert dirichlet["fedprox"]["best"] and dirichlet["fedprox"]["result"] == "missed"
    assert dirichlet["fedprox"]["detail"] == "-4.0 / -4.0 pts"
    assert dirichlet["fedavg"]["result"] == "-"
    assert rows_by_variant(bench, "pathological")["fedavg"]["result"] == "report"  # the best

    codecs = rows_by_variant(bench, "codecs")
    assert codecs["top-k 1% + EF"]["result"] == "-"  # as far at round 3, no extra rounds
    assert codecs[sys.modules["quality_cases"].TOPK_WARMUP]["best"]
    topk = codecs[sys.modules["quality_cases"].TOPK_WARMUP]
    assert topk["result"] == "met" and "within at round 5 (+2)" in topk["detail"]
    assert topk["rounds"] == 3 and topk["last"]["round"] == 10
    assert codecs["int8"]["target"] == "(bytes plot)"

    text = bench["md"].read_text()
    assert "| best LoRA variant vs full fine-tuning, same rounds |" in text
    assert "0.620 (negative)" in text and "**met**" in text and "**missed**" in text
    assert "fedtune run label_skew --set federation.strategy=scaffold" in text
    assert bench["png"].stat().st_size > 10_000


def test_rerun_skips_recorded_commands_and_fresh_reruns_them(quality, bench) -> None:
    quality.main(["--only", "iid"], runner=FakeRunner(quality))
    again = FakeRunner(quality)
    quality.main(["--only", "iid"], runner=again)
    assert again.calls == []
    fresh = FakeRunner(quality)
    quality.main(["--only", "iid", "--fresh"], runner=fresh)
    assert [argv[0] for argv in fresh.calls] == ["centralized", "local", "run"]  # baselines first


def test_failed_command_is_recorded_the_bench_goes_on_and_retries_it(quality, bench) -> None:
    quality.main(["--only", "iid"], runner=FakeRunner(quality, fail="centralized"))
    recorded = json.loads(bench["json"].read_text())["invocations"]
    failed = [r for key, r in recorded.items() if key.startswith("fedtune centralized")]
    assert failed[0]["error"] == "exit 2: fedtune: error: simulated failure"
    assert len(recorded) == 3  # the local-only run still ran after the failure
    row = rows_by_variant(bench, "iid")["FedAvg (quickstart)"]
    assert row["result"] == "no reference"
    assert row["centralized"] == {"error": failed[0]["error"]}

    retry = FakeRunner(quality)
    quality.main(["--only", "iid"], runner=retry)
    assert [argv[0] for argv in retry.calls] == ["centralized"]
    assert rows_by_variant(bench, "iid")["FedAvg (quickstart)"]["result"] == "met"


def test_quick_commands_are_small_and_keyed_apart(quality, bench) -> None:
    case = next(c for c in quality.CASES if c["name"] == "codecs")
    quick = quality.case_invocations(case, True)
    full = quality.case_invocations(case, False)
    assert set(quick) == {
        "full FT",
        sys.modules["quality_cases"].TOPK_WARMUP,
        "centralized",
        "local",
    }
    assert quick[sys.modules["quality_cases"].TOPK_WARMUP].get("federation.rounds") == "2"
    assert full[sys.modules["quality_cases"].TOPK_WARMUP].get("federation.rounds") == "10"
    assert full["top-k 1% + EF"].get("federation.rounds") is None
    assert quick["full FT"].get("data.max_samples") == "300"
    assert quick["full FT"].key(True).endswith(" [quick]")
    assert full["full FT"].key(False) == "fedtune run quickstart"
    skew = next(c for c in quality.CASES if c["name"] == "dirichlet")
    assert set(quality.case_invocations(skew, True)) == {"fedavg", "centralized", "local"}
    assert quality.case_invocations(skew, True)["fedavg"].get("data.max_samples") == "600"


def test_within_and_best_pick(quality) -> None:
    assert quality.within((-1.0, 0.5), 1.0) and not quality.within((-1.01, 2.0), 1.0)
    gap_of = {"a": (-0.5, -3.0), "b": (-1.5, -1.5), "c": (2.0, -4.0)}
    assert quality.pick_best(["a", "b", "c"], gap_of, set()) == "b"
    assert quality.pick_best(["a", "b", "c"], gap_of, {"c"}) == "c"  # met with extra rounds


def test_a_model_at_the_majority_class_is_said_so(quality) -> None:
    majority = {"label": "negative", "share": 0.62}
    always_negative = {"majority": majority, "accuracy": 0.62, "macro_f1": 0.2551}
    learnt = {"majority": majority, "accuracy": 0.62, "macro_f1": 0.45}
    better = {"majority": majority, "accuracy": 0.70, "macro_f1": 0.25}
    assert quality.at_majority(always_negative)
    assert not quality.at_majority(learnt) and not quality.at_majority(better)
    assert "at the majority class" in quality._result_cell({**always_negative, "result": "met"})
    assert quality._reference_at_majority({"majority": majority}, always_negative)
    assert not quality._reference_at_majority({"majority": majority}, learnt)


def test_dry_run_validates_every_shipped_command(quality, bench, capsys) -> None:
    quality.main(["--dry-run"])  # loads each scenario with its overrides: unknown keys fail
    out = capsys.readouterr().out
    assert "fedtune run label_skew --set federation.strategy=fedprox" in out
    distinct = {
        inv.key(False)
        for case in quality.CASES
        for inv in quality.case_invocations(case, False).values()
    }
    assert f"{len(distinct)} distinct commands" in out
    assert not bench["json"].exists()


def test_rounds_with_failed_clients_are_flagged(quality, tmp_path: Path) -> None:
    """A worker killed mid-run (e.g. for memory) leaves rounds the table must not pass off."""
    lines = [
        {"round": 0},
        {"round": 1, "failures": {"train": {"sampled": 4, "replied": 4, "errors": 0}}},
        {"round": 2, "failures": {"train": {"sampled": 4, "replied": 1, "errors": 3}}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    record = {"mode": "federated", "run_dir": str(tmp_path)}
    assert quality.client_error_rounds(record) == [2]
    assert quality.client_error_rounds({**record, "mode": "centralized"}) == []
    row = {"accuracy": 0.8, "macro_f1": 0.7, "client_error_rounds": [2]}
    assert quality._value_cell(row).endswith("; clients failed in round(s) 2")
