"""Top-k selection written against Ops: a secret one-hot of the k largest scores.

Ranks come from one batch of pairwise comparisons: for i < j, c_ij = [s_i < s_j]; then
rank_i = sum_{j>i} c_ij + sum_{j<i} (1 - c_ji), a strict order (equal scores: the earlier
index ranks first), so the ranks are a permutation of 0..n-1. The one-hot row m marks the
index of rank m: S[m, i] = [rank_i < m + 1] - [rank_i < m], from k * n more comparisons
(one batch). Under mpc nothing is opened: n(n-1)/2 + k*n sign tests in two rounds (fss).
The budget k is public; which indices are kept stays secret.
"""

from __future__ import annotations

import torch


def _pair_index(n: int):
    i, j = torch.triu_indices(n, n, 1)
    p = i.numel()
    # full[i, j] picks from cat([c, 1 - c, 0]): c_ij above the diagonal, 1 - c_ji below
    pick = torch.full((n, n), 2 * p, dtype=torch.long)
    pick[i, j] = torch.arange(p)
    pick[j, i] = p + torch.arange(p)
    return i, j, pick.flatten()


def ranks(ops, s):
    """Ranks (..., n) of the scores s (..., n): 0 for the largest (values 0.0 .. n-1)."""
    shape = ops.shape(s)
    n = shape[-1]
    if n == 1:
        return ops.mul_public(s, 0.0)
    i, j, pick = _pair_index(n)
    c = ops.bit_value(ops.ltz(ops.sub(ops.index_select(s, -1, i.tolist()),
                                      ops.index_select(s, -1, j.tolist()))))
    zero = ops.mul_public(ops.narrow(c, -1, 0, 1), 0.0)
    v = ops.cat([c, ops.add_public(ops.neg(c), 1.0), zero], -1)
    full = ops.reshape(ops.index_select(v, -1, pick.tolist()), shape[:-1] + (n, n))
    return ops.sum(full, -1)


def top_k_onehot(ops, s, k: int):
    """(..., k, n) one-hot rows of the k largest scores of s (..., n), best first, as
    integers without the fixed-point scale (``ops.bit_count``): use them as the first
    operand of ``matmul(..., integer=True)``, which then needs no truncation."""
    shape = ops.shape(s)
    n = shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top-k of {k} out of {n} scores")
    r = ops.reshape(ranks(ops, s), shape[:-1] + (1, n))
    rr = ops.cat([r] * k, -2)                                           # (..., k, n)
    thresholds = (torch.arange(1, k + 1, dtype=torch.float64) - 0.5).reshape(k, 1)
    below = ops.bit_count(ops.ltz(ops.add_public(rr, -thresholds)))     # [rank < m], m = 1..k
    if k == 1:
        return below
    prev = ops.narrow(below, -2, 0, k - 1)
    return ops.cat([ops.narrow(below, -2, 0, 1), ops.sub(ops.narrow(below, -2, 1, k - 1), prev)], -2)
