"""GPU smoke check of the local training loop: a tiny random BERT trained on CUDA under each
`training.precision`, reporting the autocast dtype, loss before/after and samples/s.

    python bench/gpu_smoke.py        # needs a CUDA GPU; exits 1 if a check fails
"""

from __future__ import annotations

import string
import sys
import time

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DataCollatorWithPadding,
)

from fedtune.config import TrainingConfig
from fedtune.modeling.train import autocast_dtype, evaluate, pick_device, train_steps

WORDS = [["late", "rude", "lost"], ["gate", "seat", "today"], ["great", "love", "thanks"]]


def main() -> int:
    device = pick_device()
    if device.type != "cuda":
        print("no CUDA device: nothing to check")
        return 1
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    chars = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    vocab += [w for ws in WORDS for w in ws]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    gen = torch.Generator().manual_seed(0)
    examples = []
    for i in range(2048):
        label = i % 3
        words = [WORDS[label][int(j)] for j in torch.randint(0, 3, (4,), generator=gen)]
        examples.append({**tokenizer(" ".join(words)), "labels": label})
    collate = DataCollatorWithPadding(tokenizer)
    ok = True
    for precision in ("auto", "bf16", "fp16", "fp32"):
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            num_labels=3,
        )
        model = BertForSequenceClassification(config)
        loader = torch.utils.data.DataLoader(
            examples, batch_size=64, shuffle=True, collate_fn=collate
        )
        cfg = TrainingConfig(local_epochs=3, batch_size=64, lr=1e-3, precision=precision)
        before = evaluate(model, loader, device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = train_steps(model, loader, cfg, device)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        after = evaluate(model, loader, device)
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        passed = finite and after["loss"] < before["loss"] and after["accuracy"] > 0.9
        ok &= passed
        print(
            f"{precision:>5}: autocast {autocast_dtype(precision, device)}, "
            f"loss {before['loss']:.3f} -> {after['loss']:.3f}, accuracy {after['accuracy']:.3f}, "
            f"{result.num_examples / seconds:.0f} samples/s, "
            f"params on {next(model.parameters()).device}, "
            f"{'ok' if passed else 'FAILED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
