"""The quality benchmark's cases: each a claim, like a row of a paper's table, with its
variants, its baselines and its target (run and tabulated by bench/quality.py)."""

from __future__ import annotations

Value = str | int | float | bool
Overrides = dict[str, Value]

QUICK: Overrides = {"data.max_samples": 300, "federation.rounds": 1}
"""--quick: on top of every command's overrides (a case's own `quick` wins over these)."""
QUICK_EXTRA_ROUNDS = 1
"""--quick: at most this many extra rounds for a variant that states extra rounds."""
TIMEOUT_S = 6 * 3600
"""One command's limit; past it the command gets SIGTERM (fedtune stops Ray cleanly)."""

PATHOLOGICAL: Overrides = {"partition.kind": "pathological", "partition.labels_per_client": 2}


STRATEGY_PARAMS: dict[str, Overrides] = {
    "fedavg": {},
    "fedprox": {"federation.strategy_params": "{proximal_mu: 0.01}"},
    "fedadam": {},
    "fedyogi": {},
    "fedavgm": {},
    "scaffold": {},
}


SKEW_METHODS: dict[str, Overrides] = {
    "scaffold + fedlc": {"federation.strategy": "scaffold", "training.label_skew.method": "fedlc"},
    "fedavg + fedlc": {"federation.strategy": "fedavg", "training.label_skew.method": "fedlc"},
    "fedavg + fedrs": {"federation.strategy": "fedavg", "training.label_skew.method": "fedrs"},
    "fedavg + logit adjustment": {
        "federation.strategy": "fedavg",
        "training.label_skew.method": "logit_adjustment",
    },
    "fedavg + fedbabu": {"federation.strategy": "fedavg", "training.label_skew.method": "fedbabu"},
}
"""The label-skew methods (`training.label_skew`) under the skewed cases, with FedAvg and
with the best strategy."""


def skew_methods(scenario: str, base: Overrides) -> list[dict]:
    return [
        {"name": name, "scenario": scenario, "overrides": {**base, **overrides}}
        for name, overrides in SKEW_METHODS.items()
    ]


def strategies(scenario: str, base: Overrides, names: tuple[str, ...]) -> list[dict]:
    """One candidate per strategy compared under label skew (fedavg runs in --quick)."""
    return [
        {
            "name": name,
            "scenario": scenario,
            "overrides": {**base, "federation.strategy": name, **STRATEGY_PARAMS[name]},
            "role": "candidate",
            "quick": name == "fedavg",
        }
        for name in names
    ]


FULL_FT = {
    "name": "full FT",
    "scenario": "quickstart",
    "overrides": {},
    "role": "reference",
    "quick": True,
    "plot": True,
}

TOPK_WARMUP = "top-k 1% + EF, density warm-up 2"
CENTRALIZED = ("quickstart", {})
"""The label-skew cases' centralized reference: the same 2,500 tweets, test split and sample
budget as `fedtune centralized label_skew`, whose only difference, the order in which the
union of the 10 skewed shards is shuffled, made that run collapse to the majority class at
lr 3e-4 (0.620 / 0.255 in all 3 round-equivalents; the quickstart's: 0.786 / 0.722)."""

CASES: list[dict] = [
    {
        "name": "lora",
        "title": "best LoRA variant vs full fine-tuning, same rounds",
        "baseline": ("quickstart", {}),
        "reference": "variant",
        "target": {"points": 1.0, "max_bytes_share": 0.01},
        "target_text": "within 1 pt of acc and macro-F1, <= 1% of full FT's bytes up",
        "variants": [
            FULL_FT,
            {"name": "LoRA r8 (lora)", "scenario": "lora", "overrides": {}, "quick": True},
            {"name": "LoRA r8 + int8", "scenario": "lora", "overrides": {"codec.kind": "int8"}},
            {
                "name": "FFA-LoRA alpha 64",
                "scenario": "lora",
                "overrides": {"model.peft.method": "ffa_lora", "model.peft.alpha": 64},
            },
            {"name": "LoRA r8, lr 4e-3", "scenario": "lora", "overrides": {"training.lr": 4e-3}},
            {
                "name": "LoRA ranks 4/8/8/16",
                "scenario": "lora",
                "overrides": {"model.peft.rank_per_client": "[4, 8, 8, 16]"},
            },
            {
                "name": "FedSA-LoRA (shared model)",
                "scenario": "lora",
                "overrides": {"model.peft.method": "fedsa_lora"},
                "role": "extra",
            },
        ],
    },
    {
        "name": "iid",
        "title": "IID quickstart, FedAvg defaults vs centralized",
        "baseline": ("quickstart", {}),
        "reference": "centralized",
        "target": {"points": 1.0},
        "target_text": "within 1 pt of centralized acc and macro-F1",
        "variants": [{**FULL_FT, "name": "FedAvg (quickstart)", "role": "candidate"}],
    },
    {
        "name": "iid-news",
        "title": "IID 20 Newsgroups (20 topics), FedAvg vs centralized",
        "baseline": ("newsgroups", {}),
        "reference": "centralized",
        "target": {"points": 1.0},
        "target_text": "within 1 pt of centralized acc and macro-F1",
        "variants": [
            {
                "name": "FedAvg (newsgroups)",
                "scenario": "newsgroups",
                "overrides": {},
                "quick": True,
            }
        ],
    },
    {
        "name": "dirichlet",
        "title": "Dirichlet alpha 0.1, 10 clients: best strategy vs centralized",
        "baseline": ("label_skew", {}),
        "centralized": CENTRALIZED,
        "quick": {"data.max_samples": 600},  # 300 tweets cannot give 10 clients 2 each
        "reference": "centralized",
        "target": {"points": 3.0},
        "target_text": "best strategy within 3 pts of centralized acc and macro-F1",
        "variants": [
            *strategies("label_skew", {}, tuple(STRATEGY_PARAMS)),
            *skew_methods("label_skew", {}),
        ],
    },
    {
        "name": "pathological",
        "title": "2 labels per client, 10 clients: best strategy vs centralized",
        "baseline": ("label_skew", PATHOLOGICAL),
        "centralized": CENTRALIZED,
        "quick": {"data.max_samples": 600},
        "reference": "centralized",
        "target": None,
        "target_text": "report (and the local-only baseline)",
        # the best and the plainest under Dirichlet 0.1 (fedprox, fedadam, fedyogi, fedavgm
        # lay between or below them there)
        "variants": [
            *strategies("label_skew", PATHOLOGICAL, ("fedavg", "scaffold")),
            *skew_methods("label_skew", PATHOLOGICAL),
        ],
    },
    {
        "name": "codecs",
        "title": "top-k 1% + error feedback vs full fine-tuning",
        "baseline": ("quickstart", {}),
        "reference": "variant",
        "target": {"points": 2.0},
        "target_text": "within 2 pts in the same rounds, or the extra rounds stated",
        "variants": [
            FULL_FT,
            {
                "name": "top-k 1% + EF",
                "scenario": "quickstart",
                "overrides": {"codec.kind": "topk", "codec.topk_fraction": 0.01},
            },
            {
                "name": TOPK_WARMUP,
                "scenario": "quickstart",
                "overrides": {
                    "codec.kind": "topk",
                    "codec.topk_fraction": 0.01,
                    "codec.dense_below": 4096,
                    "codec.topk_warmup_rounds": 2,
                },
                "extra_rounds": 7,
                "quick": True,
            },
            {
                "name": "int8",
                "scenario": "quickstart",
                "overrides": {"codec.kind": "int8"},
                "role": "extra",
            },
            {
                "name": "1-bit EF-signSGD, block 384",
                "scenario": "quickstart",
                "overrides": {"codec.kind": "onebit", "codec.block_size": 384},
                "role": "extra",
            },
            {
                "name": "top-k 5% + EF",
                "scenario": "quickstart",
                "overrides": {"codec.kind": "topk", "codec.topk_fraction": 0.05},
                "role": "extra",
            },
        ],
    },
]
"""Each case: its variants (name, scenario, overrides; role reference | candidate (default) |
extra (reported, no target); quick: runs in --quick; extra_rounds: rounds beyond the
reference's it may take; plot: on the bytes plot, default for the lora and codecs cases),
`baseline` (scenario, overrides) for its centralized and local-only runs (`centralized`:
another (scenario, overrides) for the centralized one), what it is
compared with (`reference`: its reference variant or the centralized run), and its target
(`points` below the reference at most, `max_bytes_share` of full FT's bytes up; None: report).
The best candidate is the one whose worse gap (accuracy or macro-F1) is smallest."""

PLOTTED_CASES = ("lora", "codecs")
