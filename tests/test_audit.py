"""`fedtune audit`: token recovery from one client's update (positive and negative
controls, LoRA, DP) and the membership loss attack (random halves vs an overfitted model)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import LocalGrid
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedtune.audit.inversion import invert_update
from fedtune.audit.privacy import (
    AUDIT_FILE,
    TokenScores,
    example_losses,
    inversion_audit,
    membership_scores,
    recovered_tokens,
    rouge_l,
    token_scores,
)
from fedtune.cli import main
from fedtune.config import TrainingConfig
from fedtune.data.corpus import client_splits, federated_data, make_loader, tokenize
from fedtune.federation.server.app import run_server
from fedtune.modeling.model import load_model, load_tokenizer
from fedtune.modeling.train import train_steps


def test_token_scores() -> None:
    assert token_scores({1, 2, 3, 4}, {3, 4, 5, 6}) == TokenScores(0.5, 0.5, 0.5)
    assert token_scores(set(), {1}).f1 == 0.0
    assert rouge_l([5, 6, 7], [5, 6, 7]) == 1.0
    assert rouge_l([7, 6, 5], [5, 6, 7]) == pytest.approx(1 / 3)  # one in order: LCS 1 of 3
    assert rouge_l([], [5]) == 0.0


def test_full_fine_tuning_leaks_the_batch_and_pure_noise_does_not(make_scenario) -> None:
    """Positive control: one client's full fine-tuning update gives back its batch's
    tokens. Negative control: an update of pure noise gives back none of them."""
    scenario = make_scenario()
    labels = federated_data(scenario).label_names
    for batch_size in (1, 4):
        found = inversion_audit(scenario, labels, batch_size=batch_size, batches=3)
        assert found["embeddings_in_update"] and found["view"] == "as received"
        assert found["f1"] >= 0.9, (batch_size, found)
        if batch_size == 1:  # the position rows put the text back in order
            assert found["rouge_l"] >= 0.9, found
    vocab = load_tokenizer(scenario.model.name).vocab_size
    noise = {
        "bert.embeddings.word_embeddings.weight": np.random.default_rng(0).normal(size=(vocab, 32))
    }
    truth = set(range(10, 20))
    assert token_scores(recovered_tokens(noise), truth).f1 <= 0.05


def test_lora_and_dp_updates_leak_no_tokens_to_this_attack(make_scenario) -> None:
    lora = make_scenario(model={"peft": {"method": "lora", "rank": 4}})
    labels = federated_data(lora).label_names
    found = inversion_audit(lora, labels, batch_size=1, batches=2)
    assert not found["embeddings_in_update"] and found["f1"] == found["rouge_l"] == 0.0
    dp = make_scenario(
        privacy={"dp": {"enabled": True, "noise_multiplier": 1.0, "clipping_norm": 1.0}}
    )
    found = inversion_audit(dp, labels, batch_size=1, batches=3)
    assert found["view"] == "released: clipped and noised" and found["f1"] <= 0.1
    assert found["rouge_l"] <= 0.1


@pytest.mark.slow("optimizes a gradient-matching attack (30 s)")
def test_gradient_matching_recovers_a_batch_from_its_gradient_and_not_from_noise(
    make_scenario,
) -> None:
    """Positive control: a text's exact gradient, word embeddings left out (so the word-row
    attack cannot help), gives its tokens back. Negative control: pure noise does not.
    Mean F1 over three texts."""
    scenario = make_scenario()
    labels = federated_data(scenario).label_names
    tokenizer = load_tokenizer(scenario.model.name)
    model = load_model(scenario.model.name, labels, scenario.seed, scenario.model.peft).eval()
    named = {n: p for n, p in model.named_parameters() if "word_embeddings" not in n}
    texts = client_splits(federated_data(scenario), 0, scenario.data.val_size, scenario.seed)[0]
    rng = np.random.default_rng(0)
    f1 = {"gradient": [], "noise": []}
    for i in range(3):
        batch = next(iter(make_loader(tokenize(texts.select([i]), tokenizer, 32), tokenizer, 1)))
        with sdpa_kernel(SDPBackend.MATH):
            grads = torch.autograd.grad(model(**batch).loss, list(named.values()))
        updates = {
            "gradient": {n: -g.numpy() for n, g in zip(named, grads, strict=True)},
            "noise": {n: rng.normal(size=g.shape) for n, g in zip(named, grads, strict=True)},
        }
        truth = set(batch["input_ids"][0].tolist()) - set(tokenizer.all_special_ids)
        for name, update in updates.items():
            (found,) = invert_update(model, update, batch, steps=300, seed=0)
            assert len(found) == len(batch["input_ids"][0])
            f1[name].append(token_scores(set(found), truth).f1)
    assert np.mean(f1["gradient"]) >= 0.6 and np.mean(f1["noise"]) <= 0.25, f1


def test_the_audit_runs_gradient_matching_on_full_and_lora_updates(make_scenario) -> None:
    for peft in ({"method": "none"}, {"method": "lora", "rank": 4}):
        scenario = make_scenario(model={"peft": peft})
        labels = federated_data(scenario).label_names
        found = inversion_audit(scenario, labels, batch_size=2, batches=1, steps=20)
        matched = found["gradient_matching"]
        assert matched["steps"] == 20 and 0.0 <= matched["f1"] <= 1.0, matched
        assert set(matched) == {"steps", "precision", "recall", "f1", "rouge_l"}
    assert "gradient_matching" not in inversion_audit(scenario, labels, 1, 1)  # steps=0


def _losses(model, tokenizer, ds: datasets.Dataset) -> np.ndarray:
    tokens = tokenize(ds, tokenizer, 32)
    return example_losses(model, make_loader(tokens, tokenizer, 64), torch.device("cpu"))


def _random_labels(ds: datasets.Dataset, seed: int) -> datasets.Dataset:
    """`ds` with labels drawn at random: only memorising a text gets its label right."""
    rng = np.random.default_rng(seed)
    return ds.map(lambda row: {"label": int(rng.integers(3))}).cast(ds.features)


@pytest.mark.slow("overfits a model to measure membership inference (10 s)")
def test_membership_auc_is_chance_on_non_members_and_high_when_overfitted(
    make_scenario,
) -> None:
    scenario = make_scenario()
    fed = federated_data(scenario)
    tokenizer = load_tokenizer(scenario.model.name)
    model = load_model(scenario.model.name, fed.label_names, scenario.seed)
    others = _random_labels(fed.test, seed=1)
    half = len(others) // 2
    a, b = others.select(range(half)), others.select(range(half, 2 * half))
    chance = membership_scores(_losses(model, tokenizer, a), _losses(model, tokenizer, b))
    assert abs(chance["auc"] - 0.5) < 0.15, chance
    members = _random_labels(client_splits(fed, 0, 0.0, scenario.seed)[0].select(range(24)), 2)
    cfg = TrainingConfig(lr=5e-3, local_epochs=200, batch_size=8, warmup_ratio=0.0)
    loader = make_loader(tokenize(members, tokenizer, 32), tokenizer, 8, shuffle_seed=0)
    train_steps(model, loader, cfg, torch.device("cpu"))
    overfitted = membership_scores(
        _losses(model, tokenizer, members), _losses(model, tokenizer, others)
    )
    assert overfitted["auc"] > 0.8, overfitted


def test_fedtune_audit_writes_audit_json(
    make_scenario, task_identity, tmp_path: Path, capsys
) -> None:
    scenario = make_scenario(federation={"rounds": 1}, output={"tensorboard": False})
    run_dir = Path(scenario.output.dir)
    run_server(LocalGrid(scenario), scenario, run_dir, quiet=True)
    args = ["audit", str(run_dir), "--batch-size", "1", "--batches", "2", "--inversion-steps", "30"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"audit of {run_dir} (no DP, peft none, codec none): token recovery")
    assert ", gradient matching F1 " in line
    result = json.loads((run_dir / AUDIT_FILE).read_text())
    assert result["inversion"]["batch_size"] == 1 and result["inversion"]["f1"] >= 0.9
    assert result["inversion"]["gradient_matching"]["steps"] == 30
    member = result["membership"]
    assert 0.0 <= member["auc"] <= 1.0 and member["members"] > 0
    roc = member["roc"]
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and len(roc["fpr"]) <= 101
    assert main(["report", str(run_dir)]) == 0  # the report shows it, with its ROC figure
    report = (run_dir / "report.md").read_text()
    assert "## Privacy audit (`fedtune audit`)" in report
    assert "| gradient matching, 30 steps |" in report and "| word-embedding rows |" in report
    assert "figures/membership_roc.png" in report
    assert (run_dir / "figures" / "membership_roc.png").stat().st_size > 0


def test_audit_refuses_what_it_cannot_attack(
    make_scenario, task_identity, tmp_path: Path, capsys
) -> None:
    assert main(["audit", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedtune: error: {tmp_path}: not a fedtune run (no scenario.json)"
    )
    scenario = make_scenario(federation={"rounds": 1}, output={"save_model": False})
    run_dir = Path(scenario.output.dir)
    run_server(LocalGrid(scenario), scenario, run_dir, quiet=True)
    assert main(["audit", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("no saved model (model/); run with output.save_model: true"), err
    raw = json.loads((run_dir / "scenario.json").read_text())
    raw["data"]["eval_source"] = raw["data"]["source"]
    (run_dir / "scenario.json").write_text(json.dumps(raw))
    assert main(["audit", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a deployed run (data.eval_source): the clients' data is on their nodes" in err
    assert len(err.splitlines()) == 1 and not (run_dir / AUDIT_FILE).exists()


def test_an_audit_it_cannot_write_is_one_line(
    make_scenario, task_identity, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedtune.audit.privacy

    scenario = make_scenario(federation={"rounds": 1}, output={"tensorboard": False})
    run_dir = Path(scenario.output.dir)
    run_server(LocalGrid(scenario), scenario, run_dir, quiet=True)

    def full_disk(path, data):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fedtune.audit.privacy, "write_json", full_disk)
    assert main(["audit", str(run_dir), "--batches", "1", "--max-examples", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fedtune: error: {run_dir / AUDIT_FILE}: cannot write: No space left on device"
