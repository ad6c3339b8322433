"""The model variants a run trains (train.variants): the transformer with each memory, and the
LSTM baseline sized to it; how each is configured, built and loaded, in one place.

Every variant reads the same segments with the same call, (tokens, bar positions, song ids,
state) -> (logits, loss, state), so training and evaluation need not tell them apart.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from midigen.errors import MidigenError
from midigen.models.lstm import LSTMConfig, MusicLSTM, sized_to
from midigen.models.transformer import ModelConfig, MusicTransformer
from midigen.registry import LSTM, VARIANTS

Config = ModelConfig | LSTMConfig


def transformer_variants() -> dict[str, str]:
    """The variants that are transformers, with their memory (benchmarks compare these)."""
    return {name: memory for name, memory in VARIANTS.items() if memory != LSTM}


def check_variant(variant: str) -> None:
    """An unknown variant stops here, with the known ones named."""
    if variant not in VARIANTS:
        raise MidigenError(f"unknown variant '{variant}' (known: {', '.join(VARIANTS)})")


def variant_config(variant: str, model: ModelConfig) -> Config:
    """The config of `variant` from the shared transformer settings (the memory left out):
    the LSTM gets the hidden size whose parameter count is nearest the vanilla transformer's."""
    check_variant(variant)
    if VARIANTS[variant] != LSTM:
        return ModelConfig(**{**asdict(model), "memory": VARIANTS[variant]})
    vanilla = MusicTransformer(ModelConfig(**{**asdict(model), "memory": "none"}))
    base = LSTMConfig(
        vocab_size=model.vocab_size,
        extra_fields=model.extra_fields,
        d_embed=model.d_model,  # the same embeddings as the transformer's
        bar_pos_size=model.bar_pos_size,
        dropout=model.dropout,
        segment_len=model.segment_len,
        steps_per_beat=model.steps_per_beat,
    )
    return sized_to(sum(p.numel() for p in vanilla.parameters()), base)


def build_model(config: Config) -> nn.Module:
    return MusicLSTM(config) if isinstance(config, LSTMConfig) else MusicTransformer(config)


def saved_form(model: nn.Module) -> dict:
    """What model.pt holds: weights and config (whose `memory` says which kind of model)."""
    return {"model": model.state_dict(), "model_config": asdict(model.config)}


def load_trained(
    path: Path,
    fields: tuple[int, ...],
    device: str | torch.device = "cpu",
    variant: str | None = None,
) -> nn.Module:
    """A trained model from the model.pt training saves, checked against the shards' scheme
    (the vocabulary size of each field) and, given a variant, that it is that variant."""
    if variant is not None:
        check_variant(variant)
    path = Path(path)
    if not path.exists():
        raise MidigenError(f"{path}: model not found (run midigen train first)")
    saved = torch.load(path, map_location=device, weights_only=True)
    lstm = saved["model_config"]["memory"] == LSTM
    config = (LSTMConfig if lstm else ModelConfig)(**saved["model_config"])
    predicts = (config.vocab_size, *config.extra_fields)
    if predicts != tuple(fields):
        said = " x ".join(map(str, predicts))
        raise MidigenError(
            f"{path}: the model predicts {said} tokens but the shards' vocabulary has "
            f"{' x '.join(map(str, fields))} (retrain the model after changing the encoding)"
        )
    if variant is not None and config.memory != VARIANTS[variant]:
        raise MidigenError(
            f"{path}: a model with memory '{config.memory}', not the {variant} variant"
        )
    model = build_model(config)
    model.load_state_dict(saved["model"])
    return model.to(device).eval()
