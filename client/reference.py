"""Plaintext reference for experiments where the client can read the model's weights.

Only for runs on one machine from this repo (tests, demos, benchmarks): a real client
never holds the server's weights. Fills the record's ``plaintext_seconds`` and
``fidelity`` fields.
"""

from __future__ import annotations

import time

import torch

from protocols.families.plaintext import FastOps, run_fast
from protocols.ops import TorchOps


def plaintext_forward(spec, weights, x: torch.Tensor, repeats: int = 5):
    """(output of the float64 forward, the reference for fidelity; median seconds of the
    ``plaintext`` family's fast path on this CPU, the one meaning of plaintext_seconds)."""
    ops = TorchOps(weights, dtype=torch.float64, exact=True)
    with torch.no_grad():
        y = spec.forward(ops, ops.input(x))
    fast = FastOps(weights, device="cpu")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_fast(spec, fast, x)
        times.append(time.perf_counter() - t0)
    return y, sorted(times)[len(times) // 2]


def fidelity(private: torch.Tensor, reference: torch.Tensor, budget: float) -> dict:
    """Errors against plaintext; top-1 agreement counted only where the plaintext top-2
    margin exceeds twice the error budget (near-ties are reported, not hidden)."""
    err = (private - reference).abs()
    top2 = reference.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    clear = margin > 2 * budget
    agree = private.argmax(-1) == reference.argmax(-1)
    return {
        "max_abs_error": err.max().item(),
        "mean_abs_error": err.mean().item(),
        "top1_agree": bool(agree[clear].all().item()) if clear.any() else None,
        "top1_agree_all": bool(agree.all().item()),
        "near_ties": int((~clear).sum().item()),
    }
