"""Model names the CLI and benchmarks accept."""

from __future__ import annotations

from models.digits import DIGITS_CNN, DIGITS_CNN_RELU, DIGITS_MLP, DIGITS_MLP_RELU
from models.bert_shapes import BERT_BASE_SHAPE
from models.minilm import MINILM
from models.spec import ModelSpec
from models.tiny_gpt import TINY_GPT

MODELS: dict[str, ModelSpec] = {m.name: m for m in (DIGITS_MLP, DIGITS_CNN, DIGITS_MLP_RELU,
                                                     DIGITS_CNN_RELU, MINILM,
                                                     BERT_BASE_SHAPE, TINY_GPT)}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}") from None
