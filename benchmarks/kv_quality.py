"""Plaintext retrieval accuracy of each KV eviction policy on the trained decoder.

The context (filler with key-value pairs) is the prompt: the first P = ctx - 32 tokens are
prefilled, and the last 32 (the tail of the filler and the query) are fed one by one as
decode steps under the policy, the last one predicting the value. The policy code is the
one that runs on shares (``models.kv_eviction`` through ``TorchOps``; float32, torch's own
softmax, GeLU and LayerNorm), so the selections are the ones the private run makes.
"""

from __future__ import annotations

import torch

from models.gpt import KVCache, forward
from models.kv_eviction import make_policy
from models.train_tiny_gpt import CFG, make_task, model_inputs
from protocols.ops import TorchOps

TAIL = 32            # tokens decoded step by step after the prefill
CHUNK = 256          # prefill chunk (memory only: results do not depend on it)


@torch.no_grad()
def accuracy(weights, ctx: int, samples: int, kv, *, seed: int = 2024, batch: int = 25,
             dtype=torch.float32) -> float:
    """Fraction of ``samples`` retrieval prompts of ``ctx`` tokens answered right."""
    gen = torch.Generator().manual_seed(seed)
    toks, answers, _ = make_task(samples, ctx, gen)
    ops = TorchOps(weights, dtype=dtype, exact=True)
    p_len = ctx - TAIL
    correct = 0
    for lo in range(0, samples, batch):
        t = toks[lo:lo + batch]
        x, pos = model_inputs(t, torch.zeros(len(t), dtype=torch.long), dtype=dtype)
        cache = KVCache(CFG, make_policy(kv), prompt_len=p_len)
        for start in range(0, p_len, CHUNK):
            m = min(CHUNK, p_len - start)
            forward(ops, x[:, start:start + m], pos[:, start:start + m], cache, cfg=CFG)
        cache.finish_prefill(ops)
        for j in range(p_len, ctx):
            logits = forward(ops, x[:, j:j + 1], pos[:, j:j + 1], cache, cfg=CFG)
        correct += int((logits[:, -1].argmax(-1) == answers[lo:lo + batch, 0]).sum())
    return correct / samples
