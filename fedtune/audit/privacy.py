"""`fedtune audit RUN_DIR`: what an attacker recovers from a finished simulated run, next to
its ε, PEFT method and codec. Two attacks, run only against the simulated clients' own data:

- **update inversion**: one client's update for one batch, as the attacker sees it, is
  replayed from the run's initial global model (one local step of the run's training, the
  run's codec, and under `privacy.dp` its clipping and the noise of the release); the word
  embedding rows that stand out in it are the recovered tokens (the bag of words an
  embedding update leaks: Melis et al., 2019; the first step of TAG and LAMP), put in text
  order by matching the position-embedding rows to them, and scored against the batch's
  true tokens (precision, recall, F1 of the set; ROUGE-L of the sequence);
- **membership inference**: each text's loss under the final global model (Yeom et al.,
  2018), members (clients' training texts) against non-members (the held-out test split).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedtune.atomic import write_json
from fedtune.audit import MAX_BATCH_SIZE
from fedtune.audit.inversion import invert_update
from fedtune.config import Scenario, load_scenario
from fedtune.data.corpus import client_splits, federated_data, make_loader, tokenize
from fedtune.errors import FedtuneError
from fedtune.federation.codecs import decode, encode
from fedtune.federation.strategies.deltas import update_norm
from fedtune.modeling.model import load_model, load_tokenizer, shared_weights
from fedtune.modeling.train import pick_device, train_steps

AUDIT_FILE = "audit.json"

Arrays = dict[str, np.ndarray]

ROC_POINTS = 101
"""Points of the membership attack's ROC curve kept in audit.json (for its figure)."""

STAND_OUT_MEDIAN, STAND_OUT_MAX = 10.0, 0.1
"""A word-embedding row is recovered when its update norm exceeds both 10x the median row's
and 10% of the largest row's."""


class AuditError(FedtuneError):
    """The run cannot be audited (no such run, no saved model, the clients' data not here)."""


@dataclass(frozen=True)
class TokenScores:
    precision: float
    recall: float
    f1: float


def token_scores(recovered: set[int], truth: set[int]) -> TokenScores:
    """Precision, recall and F1 of a recovered token set against the true one."""
    hits = len(recovered & truth)
    precision = hits / len(recovered) if recovered else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return TokenScores(precision, recall, f1)


def embedding_key(update: Arrays, suffix: str = "word_embeddings.weight") -> str | None:
    """The name of an embedding matrix in an update (None: it did not train, as with PEFT)."""
    return next((name for name in update if name.endswith(suffix)), None)


def stand_out(rows: np.ndarray) -> np.ndarray:
    """The indices, ascending, of the rows whose norm stands out (`STAND_OUT_*`)."""
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    limit = max(STAND_OUT_MEDIAN * float(np.median(norms)), STAND_OUT_MAX * float(norms.max()))
    return np.flatnonzero(norms > limit)


def recovered_tokens(update: Arrays, ignore: Iterable[int] = ()) -> set[int]:
    """The token ids whose word-embedding rows stand out in `update`; none when the update
    holds no word embeddings."""
    key = embedding_key(update)
    if key is None:
        return set()
    return {int(i) for i in stand_out(update[key])} - set(ignore)


def recovered_sequence(update: Arrays, ignore: Iterable[int] = ()) -> list[int]:
    """The recovered tokens in text order: each position-embedding row that stands out, in
    position order, matched to the standing-out word row it most resembles (cosine). At batch
    size 1 the word row of the token at position p receives exactly position p's gradient
    (their sum feeds the same LayerNorm input), so the match is exact; larger batches sum
    several texts per position. Empty without both embeddings in the update."""
    word_key, position_key = (
        embedding_key(update),
        embedding_key(update, "position_embeddings.weight"),
    )
    if word_key is None or position_key is None:
        return []
    words, positions = stand_out(update[word_key]), stand_out(update[position_key])
    if not len(words) or not len(positions):
        return []

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float64)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    similarity = unit(update[position_key][positions]) @ unit(update[word_key][words]).T
    skipped = set(ignore)
    return [int(t) for t in words[similarity.argmax(axis=1)] if int(t) not in skipped]


def rouge_l(recovered: list[int], truth: list[int]) -> float:
    """ROUGE-L F-measure of a recovered token sequence against the true one (Google's
    `rouge-score` on token ids)."""
    from rouge_score import rouge_scorer

    class _Ids:
        def tokenize(self, text: str) -> list[str]:
            return text.split()

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Ids())
    joined = " ".join(map(str, truth)), " ".join(map(str, recovered))
    return float(scorer.score(*joined)["rougeL"].fmeasure)


def observed_update(
    scenario: Scenario, model: PreTrainedModel, batch: DataLoader, rng: np.random.Generator
) -> Arrays:
    """One client's update for the one batch in `batch`, as the attacker sees it: one local
    step of the run's training from the model's current (global) weights, through the run's
    codec; under `privacy.dp`, clipped to its norm and with Gaussian noise of std
    noise_multiplier x clipping_norm (the release's noise, at the scale of one update: the
    aggregate is these summed over the clients, divided by their count)."""
    before = shared_weights(model, scenario.model.peft)
    cfg = scenario.training.model_copy(update={"local_epochs": 1})
    train_steps(model, batch, cfg, pick_device(), max_examples=len(batch.dataset))
    after = shared_weights(model, scenario.model.peft)
    update = {name: after[name] - value for name, value in before.items()}
    update = decode(scenario.codec, encode(scenario.codec, update), update)
    dp = scenario.privacy.dp
    if not dp.enabled:
        return update
    scale = min(1.0, dp.clipping_norm / max(update_norm(update), 1e-12))
    std = dp.noise_multiplier * dp.clipping_norm
    return {
        n: u * scale + rng.normal(0.0, std, u.shape).astype(np.float32) for n, u in update.items()
    }


def inversion_audit(
    scenario: Scenario,
    label_names: tuple[str, ...],
    batch_size: int,
    batches: int,
    steps: int = 0,
) -> dict:
    """Token recovery from `batches` replayed updates of `batch_size` texts each (the
    first texts of clients 0, 1, ...), averaged: by the word-embedding rows, and with
    `steps` > 0 also by `steps` iterations of gradient matching (`fedtune.audit.inversion`)."""
    tokenizer = load_tokenizer(scenario.model.name)
    fed = federated_data(scenario)
    model = load_model(
        scenario.model.name, label_names, scenario.seed, scenario.model.peft, scenario.data.tabular
    )
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    special = set(tokenizer.all_special_ids)
    rng = np.random.default_rng(scenario.seed)
    rows, matched = [], []
    for i in range(batches):
        train, _ = client_splits(
            fed, i % scenario.partition.num_clients, scenario.data.val_size, scenario.seed
        )
        texts = train.select(range(min(batch_size, len(train))))
        tokens = tokenize(texts, tokenizer, scenario.model.max_length, scenario.data.tabular)
        sequence = [int(t) for ids in tokens["input_ids"] for t in ids if int(t) not in special]
        loader = make_loader(tokens, tokenizer, batch_size)
        model.load_state_dict(initial)
        update = observed_update(scenario, model, loader, rng)
        rows.append(
            recovery(
                recovered_sequence(update, special), recovered_tokens(update, special), sequence
            )
        )
        if steps:
            model.load_state_dict(initial)
            found = invert_update(model, update, next(iter(loader)), steps, scenario.seed + i)
            found = [t for ids in found for t in ids if t not in special]
            matched.append(recovery(found, set(found), sequence))
    result = {
        "attack": "word-embedding rows of one client's update (bag of words)",
        "batch_size": batch_size,
        "batches": batches,
        "view": "released: clipped and noised" if scenario.privacy.dp.enabled else "as received",
        "embeddings_in_update": embedding_key(shared_weights(model, scenario.model.peft))
        is not None,
        **mean_recovery(rows),
    }
    if steps:
        result["gradient_matching"] = {"steps": steps, **mean_recovery(matched)}
    return result


def recovery(recovered: list[int], token_set: set[int], truth: list[int]) -> dict:
    """Token precision, recall, F1 (of `token_set`) and ROUGE-L (of `recovered`)."""
    scores = token_scores(token_set, set(truth))
    return {**asdict(scores), "rouge_l": rouge_l(recovered, truth)}


def mean_recovery(rows: list[dict]) -> dict:
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


@torch.inference_mode()
def example_losses(model: PreTrainedModel, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Each example's cross-entropy under `model`, in the loader's order."""
    model.to(device).eval()
    losses = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="none").cpu())
    return torch.cat(losses).numpy()


def membership_scores(member_losses: np.ndarray, other_losses: np.ndarray) -> dict:
    """The loss-threshold attack's AUC (members have lower loss) and its true-positive rate
    at 1% false positives."""
    y = np.r_[np.ones(len(member_losses)), np.zeros(len(other_losses))]
    score = -np.r_[member_losses, other_losses]
    fpr, tpr, _ = roc_curve(y, score)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).astype(int))
    return {
        "auc": float(roc_auc_score(y, score)),
        "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
        "members": len(member_losses),
        "non_members": len(other_losses),
        "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
    }


def _sample(ds: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    return ds.shuffle(seed=seed).select(range(min(n, len(ds))))


def membership_audit(
    scenario: Scenario,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    max_examples: int,
) -> dict:
    """The loss attack on the final model: up to `max_examples` of the clients' training
    texts against as many held-out test texts."""
    fed = federated_data(scenario)
    members = datasets.concatenate_datasets(
        [
            client_splits(fed, pid, scenario.data.val_size, scenario.seed)[0]
            for pid in range(scenario.partition.num_clients)
        ]
    )
    n = min(max_examples, len(members), len(fed.test))
    device = pick_device()
    losses = []
    for ds in (members, fed.test):
        sample = _sample(ds.select_columns(fed.test.column_names), n, scenario.seed)
        tokens = tokenize(sample, tokenizer, scenario.model.max_length, scenario.data.tabular)
        loader = make_loader(tokens, tokenizer, scenario.training.eval_batch_size)
        losses.append(example_losses(model, loader, device))
    return membership_scores(*losses)


def audit_run(
    run_dir: Path,
    batch_size: int | None = None,
    batches: int = 8,
    max_examples: int = 500,
    inversion_steps: int = 100,
) -> dict:
    """Both attacks on a finished simulated run; the result, also written to audit.json."""
    from fedtune.runs.report import read_run
    from fedtune.serve.predictor import Predictor

    if not (run_dir / "scenario.json").is_file():
        raise AuditError(f"{run_dir}: not a fedtune run (no scenario.json)")
    scenario = load_scenario(run_dir / "scenario.json")
    if scenario.data.eval_source is not None:
        raise AuditError(
            f"{run_dir}: a deployed run (data.eval_source): the clients' data is on their "
            "nodes, not here, so neither attack can be scored"
        )
    if not (run_dir / "model" / "config.json").is_file():
        raise AuditError(f"{run_dir}: no saved model (model/); run with output.save_model: true")
    batch_size = batch_size or scenario.training.batch_size
    if batch_size > MAX_BATCH_SIZE:
        raise AuditError(
            f"{run_dir}: batch size {batch_size} is above the {MAX_BATCH_SIZE} texts one "
            "attacked update may hold; give --batch-size"
        )
    summary = read_run(run_dir)["summary"]
    predictor = Predictor(run_dir / "model")
    result = {
        "run": str(run_dir),
        "epsilon": (summary.get("privacy") or {}).get("epsilon"),
        "delta": (summary.get("privacy") or {}).get("delta"),
        "peft": scenario.model.peft.method,
        "codec": scenario.codec.kind,
        "inversion": inversion_audit(
            scenario,
            tuple(predictor.labels),
            batch_size,
            batches,
            inversion_steps,
        ),
        "membership": membership_audit(
            scenario, predictor.model, predictor.tokenizer, max_examples
        ),
    }
    try:
        write_json(run_dir / AUDIT_FILE, result)
    except OSError as exc:
        raise AuditError(f"{run_dir / AUDIT_FILE}: cannot write: {exc.strerror or exc}") from None
    return result
