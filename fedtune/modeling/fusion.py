"""Text + tabular fusion classifier in HF conventions.

`FusionModel` runs a BERT-family encoder over the text and a small tabular tower (one
embedding per categorical column, normalised numerics with missing-indicators, an MLP) and
fuses both in its `classifier` head (`concat` or `gated`). The columns and
their encoding are `fedtune.data.tabular`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from fedtune.data.tabular import TabularSpec, spec_from_config

if TYPE_CHECKING:
    from fedtune.config import TabularConfig

FUSIONS = ("concat", "gated")
POOLINGS = ("mean", "cls")


def fusion_from_config(
    encoder: str, cfg: TabularConfig, label_names: Sequence[str], seed: int
) -> FusionModel:
    """A seeded fusion model around the encoder `encoder` names, as `data.tabular` declares."""
    return FusionModel.from_encoder(
        encoder,
        spec_from_config(cfg),
        label_names,
        seed,
        fusion=cfg.fusion,
        embedding_dim=cfg.embedding_dim,
        tabular_hidden_size=cfg.hidden_size,
    )


# ---- model ------------------------------------------------------------------------------


class FusionConfig(PretrainedConfig):
    """A fusion classifier: `encoder` the text encoder's config as a dict (with its
    `model_type`), `tabular` a TabularSpec as a dict, `embedding_dim` per categorical
    column, `tabular_hidden_size` the width of the tabular MLP and the fusion head, `fusion`
    `concat` or `gated`, `pooling` `mean` (masked mean of the last hidden states) or `cls`
    (the encoder's pooled [CLS] output); labels as usual (num_labels, id2label, label2id)."""

    model_type = "fedtune-fusion"

    encoder: dict | None = None
    tabular: dict | None = None
    embedding_dim: int = 16
    tabular_hidden_size: int = 64
    fusion: str = "concat"
    pooling: str = "mean"
    dropout: float = 0.1

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r}: not one of {FUSIONS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: not one of {POOLINGS}")

    def encoder_config(self) -> PretrainedConfig:
        if not self.encoder:
            raise ValueError("FusionConfig has no encoder config")
        fields = dict(self.encoder)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    def tabular_spec(self) -> TabularSpec:
        return TabularSpec.from_dict(self.tabular or {})


class TabularTower(nn.Module):
    """Categorical embeddings and numeric features (with missing-indicators) through an MLP."""

    def __init__(self, spec: TabularSpec, embedding_dim: int, hidden: int, dropout: float):
        super().__init__()
        if not spec.numeric and not spec.categorical:
            raise ValueError("the TabularSpec declares no columns")
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(c.vocabulary) + 1, embedding_dim) for c in spec.categorical
        )
        width = len(spec.categorical) * embedding_dim + spec.numeric_width
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [embed(categorical[:, j]) for j, embed in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, numeric.to(self.mlp[0].weight.dtype)], dim=-1))


class FusionHead(nn.Module):
    """`concat`: [text; tabular] -> MLP -> logits. `gated`: a learned sigmoid gate g mixes
    the projected vectors, g * P(text) + (1 - g) * Q(tabular), -> logits."""

    def __init__(self, text: int, tabular: int, labels: int, fusion: str, dropout: float):
        super().__init__()
        self.fusion = fusion
        self.dropout = nn.Dropout(dropout)
        if fusion == "gated":
            self.text_proj = nn.Linear(text, tabular)
            self.tabular_proj = nn.Linear(tabular, tabular)
            self.gate = nn.Linear(text + tabular, tabular)
        else:
            self.hidden = nn.Linear(text + tabular, tabular)
        self.out = nn.Linear(tabular, labels)

    def forward(self, text: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        both = self.dropout(torch.cat([text, tabular], dim=-1))
        if self.fusion == "gated":
            gate = torch.sigmoid(self.gate(both))
            mixed = gate * self.text_proj(text) + (1 - gate) * self.tabular_proj(tabular)
        else:
            mixed = self.hidden(both)
        return self.out(self.dropout(nn.functional.gelu(mixed)))


class FusionModel(PreTrainedModel):
    """A text encoder (`encoder`), a tabular tower (`tabular`) and a fusion head
    (`classifier`); `forward` returns a SequenceClassifierOutput (cross-entropy loss when
    labels are given)."""

    config_class = FusionConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"

    def __init__(self, config: FusionConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.encoder = _encoder_from_config(encoder_config, config.pooling)
        self.tabular = TabularTower(
            config.tabular_spec(), config.embedding_dim, config.tabular_hidden_size, config.dropout
        )
        self.classifier = FusionHead(
            encoder_config.hidden_size,
            config.tabular_hidden_size,
            config.num_labels,
            config.fusion,
            config.dropout,
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def from_encoder(
        cls,
        encoder: str | Path | PreTrainedModel,
        spec: TabularSpec,
        label_names: Sequence[str],
        seed: int,
        **kwargs: Any,
    ) -> FusionModel:
        """A fusion model around a pretrained encoder (a model, a directory or a
        hub id; a model with a head gives its base model), its weights copied; the tabular
        tower and head seeded, so every process builds the same initial weights. `kwargs`:
        FusionConfig fields (embedding_dim, tabular_hidden_size, fusion, pooling, dropout)."""
        if not isinstance(encoder, PreTrainedModel):
            encoder = AutoModel.from_pretrained(str(encoder))
        encoder = encoder.base_model
        config = FusionConfig(
            encoder=encoder.config.to_dict(),
            tabular=spec.to_dict(),
            id2label=dict(enumerate(label_names)),
            label2id={label: i for i, label in enumerate(label_names)},
            **kwargs,
        )
        torch.manual_seed(seed)
        model = cls(config)
        result = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
        if result.missing_keys:
            raise ValueError(f"encoder weights missing for {result.missing_keys[:3]}")
        return model

    def text_vector(self, hidden: torch.Tensor, pooled: Any, mask: torch.Tensor | None):
        if self.config.pooling == "cls":
            return pooled if pooled is not None else hidden[:, 0]
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        numeric: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,  # accepted for peft's SEQ_CLS wrapper; always a dict
    ) -> SequenceClassifierOutput:
        extra = {
            key: value
            for key, value in (
                ("output_attentions", output_attentions),
                ("output_hidden_states", output_hidden_states),
            )
            if value is not None
        }
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **extra,
        )
        text = self.text_vector(
            out.last_hidden_state, getattr(out, "pooler_output", None), attention_mask
        )
        numeric, categorical = self._tabular_inputs(text, numeric, categorical)
        logits = self.classifier(text, self.tabular(numeric, categorical))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )

    def _tabular_inputs(
        self, text: torch.Tensor, numeric: torch.Tensor | None, categorical: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tabular tensors, empty ones where the spec declares no such column."""
        spec = self.config.tabular_spec()
        n = text.shape[0]
        if numeric is None:
            if spec.numeric:
                raise ValueError(f"numeric features needed for {[c.name for c in spec.numeric]}")
            numeric = text.new_zeros((n, 0))
        if categorical is None:
            if spec.categorical:
                names = [c.name for c in spec.categorical]
                raise ValueError(f"categorical features needed for {names}")
            categorical = torch.zeros((n, 0), dtype=torch.long, device=text.device)
        return numeric, categorical


def _encoder_from_config(config: PretrainedConfig, pooling: str) -> PreTrainedModel:
    """The encoder, without its [CLS] pooler where mean pooling leaves it unused (when the
    architecture has the option)."""
    if pooling == "mean":
        try:
            return AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            pass
    return AutoModel.from_config(config)


AutoConfig.register(FusionConfig.model_type, FusionConfig, exist_ok=True)
AutoModel.register(FusionConfig, FusionModel, exist_ok=True)
AutoModelForSequenceClassification.register(FusionConfig, FusionModel, exist_ok=True)
