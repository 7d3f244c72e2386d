"""Run outputs seen as pictures: figures, `fedtune report`, `fedtune compare`, TensorBoard."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedtune.cli import main
from fedtune.runs.recorder import RunRecorder
from fedtune.runs.report import DPI, FIGURE_SIZE, NAMED_CLIENT_ROWS, make_figures, plot_partition

LABELS = ["negative", "neutral", "positive"]


def fake_run(
    run_dir: Path,
    make_scenario,
    accuracies: list[float],
    epsilon: bool = False,
    mode: str = "federated",
    target: float | None = None,
) -> Path:
    """A run directory written by the real RunRecorder from made-up round results."""
    scenario = make_scenario(output={"dir": str(run_dir)}, federation={"target": target})
    with RunRecorder(run_dir, scenario, mode, 3) as recorder:
        recorder.write_partition(
            {
                "labels": LABELS,
                "test": dict.fromkeys(LABELS, 10),
                "clients": [
                    {
                        "partition_id": i,
                        "name": f"client-{i}",
                        "num_examples": 30,
                        "label_counts": {lab: 10 * (i == j) + 5 for j, lab in enumerate(LABELS)},
                    }
                    for i in range(3)
                ],
            }
        )
        for rnd, acc in enumerate(accuracies):
            if rnd:
                clients = [
                    {"node_id": i, "num-examples": 27, "train_loss": 1 - acc} for i in range(3)
                ]
                recorder.exchange("train", clients, bytes_down=3000, bytes_up=3000)
                evals = [
                    {
                        "node_id": i,
                        "num-examples": 3,
                        "eval_accuracy": acc - 0.05 * i,
                        "eval_loss": 1 - acc,
                        "eval_macro_f1": acc - 0.1,
                    }
                    for i in range(3)
                ]
                recorder.exchange("evaluate", evals, bytes_down=3000, bytes_up=0)
            per_class = {
                lab: {"precision": acc, "recall": acc, "f1-score": acc, "support": 10.0}
                for lab in LABELS
            }
            central = {
                "accuracy": acc,
                "macro_f1": acc - 0.05,
                "loss": 1 - acc,
                "per_class": per_class,
            }
            federated = {
                "eval_accuracy": acc - 0.05,
                "eval_loss": 1 - acc,
                "eval_macro_f1": acc - 0.1,
            }
            if rnd:
                recorder.aggregated("evaluate", federated)
            recorder.round_done(rnd, central, 1.5)
            if epsilon:  # what a DP run adds to each line
                lines = (run_dir / "metrics.jsonl").read_text().splitlines()
                lines[-1] = json.dumps({**json.loads(lines[-1]), "epsilon": 0.5 * rnd})
                (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
                recorder.lines = lines
        recorder.finish()
    return run_dir


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        if size:
            assert image.size == size
        assert len(set(image.convert("L").getdata())) > 10, "not a blank image"


def test_run_end_writes_figures_and_tensorboard(make_scenario, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", make_scenario, [0.3, 0.6, 0.8])
    size = (int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))
    for name in ("curves", "client_accuracy", "bytes"):
        assert_png(run_dir / "figures" / f"{name}.png", size)
    assert_png(run_dir / "figures" / "partition.png")
    assert not (run_dir / "figures" / "epsilon.png").exists(), "no DP, no epsilon plot"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bytes_up_total"] == 2 * 3000 and summary["bytes_down_total"] == 2 * 6000
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    accuracy = [e.value for e in events.Scalars("central/accuracy")]
    assert accuracy == pytest.approx([0.3, 0.6, 0.8])
    assert "federated/eval_accuracy" in events.Tags()["scalars"]


def test_the_partition_map_of_a_thousand_clients_keeps_the_size_of_a_forty_client_one(
    tmp_path: Path,
) -> None:
    """One 35-pixel row per client would make a 35,000-pixel image (and 100+ MB of server
    memory) for a cross-device federation."""
    heights = {}
    for clients in (NAMED_CLIENT_ROWS, 1000):
        table = {
            "labels": ["a", "b"],
            "clients": [
                {"name": f"client-{i}", "label_counts": {"a": i % 7, "b": 3}}
                for i in range(clients)
            ],
        }
        path = plot_partition({"partition": table}, tmp_path / f"{clients}.png")
        assert_png(path)
        heights[clients] = Image.open(path).size[1]
    assert heights[1000] == heights[NAMED_CLIENT_ROWS] < 20 * DPI


def test_epsilon_plot_when_dp_metrics_exist(make_scenario, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "dp", make_scenario, [0.3, 0.5, 0.6], epsilon=True)
    assert run_dir / "figures" / "epsilon.png" in make_figures(run_dir)
    assert_png(run_dir / "figures" / "epsilon.png")


def test_report_command(make_scenario, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", make_scenario, [0.3, 0.6, 0.8])
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert set(images) == {
        f"figures/{n}.png" for n in ("curves", "client_accuracy", "partition", "bytes", "cost")
    }
    for image in images:
        assert_png(run_dir / image)
    assert "| positive | 0.8000 | 0.8000 | 0.8000 | 10 |" in text, "final classification report"
    assert "| client-0 | 30 | 15 | 5 | 5 |" in text, "partition table"
    assert "name: tiny" in text, "scenario"
    html = (run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(images)
    assert "figures/" not in html, "self-contained"


def test_compare_command(make_scenario, tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", make_scenario, [0.3, 0.6, 0.8])
    b = fake_run(tmp_path / "b", make_scenario, [0.3, 0.4, 0.5])
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "[a] | 2 | 0.8000 | 0.7500 |" in text and "[b] | 2 | 0.5000 | 0.4500 |" in text
    assert_png(out / "compare.png", (1200, 400))
    assert 'src="data:image/png;base64,' in (out / "compare.html").read_text()


def test_compare_reports_each_runs_cost_to_the_centralized_final_value(
    make_scenario, tmp_path: Path
) -> None:
    """Without a target of its own, each run is measured against the centralized run's final
    headline value (accuracy 0.6 here); a round here takes 1.5 s and 9,000 bytes."""
    central = fake_run(tmp_path / "c", make_scenario, [0.3, 0.5, 0.6], mode="centralized")
    fast = fake_run(tmp_path / "fast", make_scenario, [0.3, 0.6, 0.8])
    slow = fake_run(tmp_path / "slow", make_scenario, [0.3, 0.4, 0.5])
    own = fake_run(tmp_path / "own", make_scenario, [0.3, 0.4, 0.5], target=0.45)
    out = tmp_path / "cmp"
    assert (
        main(["compare", str(central), str(fast), str(slow), str(own), "--output", str(out)]) == 0
    )
    table = (out / "compare.md").read_text().splitlines()
    row = {
        name: next(line for line in table if f"[{name}] |" in line)
        for name in ("fast", "slow", "own")
    }
    assert row["fast"].endswith("| accuracy 0.600 | round 1, 3.0 s, 9.0 KB |")
    assert row["slow"].endswith("| accuracy 0.600 | not reached (4.5 s, 18.0 KB) |")
    assert row["own"].endswith("| accuracy 0.450 | round 2, 4.5 s, 18.0 KB |")
    assert_png(out / "compare_cost.png", (700, 400))
    report = (own / "summary.json").read_text()
    assert json.loads(report)["cost_to_target"]["round"] == 2


def test_report_on_a_non_run_dir(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a fedtune run" in capsys.readouterr().err


def test_recorder_detaches_its_log_even_when_the_run_fails(make_scenario, tmp_path: Path) -> None:
    scenario = make_scenario()
    with pytest.raises(RuntimeError), RunRecorder(tmp_path, scenario, "federated", 2) as recorder:
        raise RuntimeError("client crashed")
    assert recorder.log_handler not in logging.getLogger("flwr").handlers
    assert recorder.log_handler.stream is None, "run.log closed"
