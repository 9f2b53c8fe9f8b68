"""BERT-base-shaped encoder (12 layers, d = 768, 12 heads, FFN 3072, BERT's vocabulary)
with seeded random weights: for cost measurements only (bytes, rounds, seconds, memory
beside published figures such as PUMA's); its outputs mean nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from models.bert import BertConfig, bert_arch, bert_params, make_forward
from models.minilm import BUCKETS
from models.spec import ModelSpec

CONFIG = BertConfig(d=768, layers=12, heads=12, ffn=3072)


def random_weights(path=None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in bert_params(CONFIG).items():
        if name.endswith("ln.weight") or name.endswith(("ln1.weight", "ln2.weight")):
            out[name] = torch.ones(shape, dtype=torch.float64)
        else:
            out[name] = torch.randn(shape, generator=g, dtype=torch.float64) * 0.02
    return out


BERT_BASE_SHAPE = ModelSpec(
    name="bert-base-shape", input_shape=(BUCKETS[-1], CONFIG.vocab), params=bert_params(CONFIG),
    forward=make_forward(CONFIG), weights_file=Path("random"), task="embedding",
    seq_buckets=BUCKETS, loader=random_weights, notes={"ee": bert_arch(CONFIG)},
    input_range=(0.0, 1.0))
