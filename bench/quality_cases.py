"""The quality benchmark's cases: each a claim, like a row of a paper's table, measured by
one or more `fedtune sweep`s and judged by its target (run and tabulated by
bench/quality.py). Adding a row is adding one `Case` here."""

from __future__ import annotations

from dataclasses import dataclass, field

from commands import Value, yaml_value

QUICK: dict[str, Value] = {"data.max_samples": 300, "federation.rounds": 1}
"""--quick: over every sweep's overrides (and a case's own `quick` over these)."""


@dataclass(frozen=True)
class Sweep:
    """One `fedtune sweep SCENARIO --grid ... --set ... [--with-baselines]`."""

    scenario: str
    grid: dict[str, list[Value]]
    sets: dict[str, Value] = field(default_factory=dict)
    baselines: bool = False
    name: str = ""
    """A prefix for its runs' labels (`name: key=value`)."""
    quick: bool = True
    """Whether it runs in --quick."""

    def args(self, extra: dict[str, Value]) -> list[str]:
        """The command's arguments after `fedtune sweep`, without --output."""
        grid = [f"{key}={','.join(map(yaml_value, values))}" for key, values in self.grid.items()]
        sets = {**self.sets, **extra}
        return [
            self.scenario,
            *[part for item in grid for part in ("--grid", item)],
            *[
                part
                for key, value in sets.items()
                for part in ("--set", f"{key}={yaml_value(value)}")
            ],
            *(["--with-baselines"] if self.baselines else []),
        ]


@dataclass(frozen=True)
class NearCentralized:
    """Within `acc` / `f1` points of the centralized reference (the stronger of its
    same-budget and converged runs) by a round whose training examples are at most
    `max_examples` times the reference's; `every_class`: F1 > 0 on every class at the end."""

    acc: float | None
    f1: float | None
    max_examples: float | None = None
    every_class: bool = False

    def text(self) -> str:
        limits = [f"{p:g} pt ({m})" for p, m in ((self.acc, "acc"), (self.f1, "F1")) if p]
        text = "within " + " and ".join(limits) + " of centralized"
        if self.max_examples:
            text += f", <= {self.max_examples:g}x its examples"
        return text + ("; F1 > 0 on every class" if self.every_class else "")


@dataclass(frozen=True)
class MatchesReference:
    """Reaches the `reference` run's final accuracy and macro-F1 (within `points`) having
    spent at most `max_bytes` of its bytes (up + down) and `max_wall` times its wall time."""

    reference: str
    points: float
    max_bytes: float
    max_wall: float | None = None

    def text(self) -> str:
        wall = f", <= {self.max_wall:g}x its wall time" if self.max_wall else ""
        bytes_ = f"<= {self.max_bytes:.0%} of its bytes"
        return f"within {self.points:g} pt of {self.reference}, {bytes_}{wall}"


@dataclass(frozen=True)
class AboveMajority:
    """Headline metric at least `margin` above the majority class; `max_epsilon`: the
    run's DP epsilon at most this; `paired`: within `paired_points` of that run."""

    margin: float = 0.15
    max_epsilon: float | None = None
    paired: str | None = None
    paired_points: float = 0.5

    def text(self) -> str:
        text = f"headline >= majority + {self.margin:g}"
        if self.max_epsilon:
            text += f", epsilon <= {self.max_epsilon:g}"
        if self.paired:
            text += f"; within {self.paired_points:g} pt of {self.paired}"
        return text


Target = NearCentralized | MatchesReference | AboveMajority


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    target: Target
    sweeps: list[Sweep]
    centralized_from: str | None = None
    """Another case whose centralized run is the reference (same pooled data)."""
    quick: dict[str, Value] = field(default_factory=dict)


STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "scaffold"]
METHODS = ["fedlc", "fedrs", "logit_adjustment", "fedbabu"]
PATHOLOGICAL = {"partition.kind": "pathological", "partition.labels_per_client": 2}
SKEW_ROUNDS = {"federation.rounds": 6}
"""The skewed cases' budget: up to 2x the quickstart centralized run's 3 round-equivalents
(the target allows 3x its examples)."""
FULL_FT = Sweep("quickstart", {"federation.strategy": ["fedavg"]}, baselines=True, name="full FT")
"""The quickstart as shipped, with its baselines: the IID case and the reference of the
LoRA and codec cases (one sweep, run once)."""
FULL_FT_LABEL = "full FT: strategy=fedavg"


def shipped(scenario: str, strategy: str, baselines: bool = True, quick: bool = True) -> Sweep:
    """A scenario as shipped (its own strategy as the grid's one value)."""
    return Sweep(scenario, {"federation.strategy": [strategy]}, baselines=baselines, quick=quick)


CASES: list[Case] = [
    Case("iid", "IID quickstart, FedAvg vs centralized", NearCentralized(1, 1, 1.5), [FULL_FT]),
    Case(
        "iid-news",
        "IID 20 Newsgroups (20 topics), FedAvg vs centralized",
        NearCentralized(1, 1, 1.5),
        [shipped("newsgroups", "fedavg")],
    ),
    Case(
        "dirichlet",
        "Dirichlet alpha 0.1, 10 clients: strategies and label-skew methods vs centralized",
        NearCentralized(3, 5, 3),
        [
            Sweep("label_skew", {"federation.strategy": STRATEGIES}, SKEW_ROUNDS, baselines=True),
            Sweep(
                "label_skew",
                {"training.label_skew.method": METHODS},
                {**SKEW_ROUNDS, "federation.strategy": "fedavg"},
                name="fedavg",
                quick=False,
            ),
            Sweep(
                "label_skew",
                {"training.label_skew.method": ["fedlc"]},
                {**SKEW_ROUNDS, "federation.strategy": "scaffold"},
                name="scaffold",
                quick=False,
            ),
        ],
        centralized_from="iid",
        quick={"data.max_samples": 600},  # 300 tweets cannot give 10 clients 2 each
    ),
    Case(
        "pathological",
        "2 labels per client, 10 clients: strategies and label-skew methods vs centralized",
        NearCentralized(3, 5, 3),
        [
            Sweep(
                "label_skew",
                {"federation.strategy": ["fedavg", "scaffold"]},
                {**PATHOLOGICAL, **SKEW_ROUNDS},
                baselines=True,
            ),
            Sweep(
                "label_skew",
                {"training.label_skew.method": METHODS},
                {**PATHOLOGICAL, **SKEW_ROUNDS, "federation.strategy": "fedavg"},
                name="fedavg",
                quick=False,
            ),
        ],
        centralized_from="iid",
        quick={"data.max_samples": 600},
    ),
    Case(
        "lora",
        "LoRA vs full fine-tuning (quickstart federation)",
        MatchesReference(FULL_FT_LABEL, 1, 0.02, 1.0),
        [
            FULL_FT,
            shipped("lora", "fedavg"),
            Sweep("lora", {"model.peft.rank": [4]}, name="LoRA", quick=False),
            Sweep("lora", {"model.peft.use_rslora": [True]}, name="LoRA r8", quick=False),
            Sweep("lora", {"codec.kind": ["int8"]}, name="LoRA r8", quick=False),
            Sweep(
                "lora",
                {"model.peft.method": ["ffa_lora"]},
                {"model.peft.alpha": 64},
                name="alpha 64",
                quick=False,
            ),
        ],
    ),
    Case(
        "codecs",
        "top-k 1% + error feedback (and other codecs) vs full fine-tuning",
        MatchesReference(FULL_FT_LABEL, 1, 0.10),
        [
            FULL_FT,
            Sweep(
                "quickstart",
                {"codec.topk_fraction": [0.01, 0.05]},
                {
                    "codec.kind": "topk",
                    "codec.dense_below": 4096,
                    "codec.topk_warmup_rounds": 2,
                    "federation.rounds": 10,
                },
                name="top-k + EF, warm-up 2",
            ),
            Sweep(
                "quickstart",
                {"codec.kind": ["int8", "onebit"]},
                {"federation.rounds": 6},
                quick=False,
            ),
        ],
    ),
    Case(
        "dp",
        "client-level DP as shipped (1,200 clients, 5% a round)",
        AboveMajority(0.15, max_epsilon=8),
        [shipped("dp", "fedavg", baselines=False, quick=False)],
    ),
    Case(
        "secagg",
        "SecAgg+ as shipped, and the same run without it",
        AboveMajority(0.15, paired="secagg: enabled=false"),
        [shipped("secagg", "fedavg"), Sweep("secagg", {"privacy.secagg.enabled": [False]})],
    ),
    Case(
        "financial",
        "financial sentiment (3 classes, Dirichlet 0.5)",
        NearCentralized(None, 3, every_class=True),
        [shipped("financial_sentiment", "fedavg")],
    ),
    Case(
        "scenarios",
        "every shipped scenario, as shipped, with its baselines",
        AboveMajority(0.15),
        [
            FULL_FT,
            shipped("newsgroups", "fedavg"),
            shipped("label_skew", "scaffold"),
            shipped("lora", "fedavg"),
            shipped("dp", "fedavg", baselines=False, quick=False),
            shipped("secagg", "fedavg"),
            shipped("financial_sentiment", "fedavg"),
            shipped("customer_service", "fedavg"),
            shipped("noniid_strategies", "fedavg"),
            shipped("byzantine", "krum"),
            shipped("dp_cross_device", "fedavg", baselines=False, quick=False),
            shipped("recommendation", "fedavg"),
            shipped("recommendation_cross_device", "fedavg", baselines=False, quick=False),
        ],
    ),
]
"""Every claim of the benchmark, in the order it runs. A sweep shared by several cases (the
same arguments) runs once."""
