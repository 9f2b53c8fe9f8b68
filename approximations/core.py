"""Building blocks written once against Ops: clip, exp, reciprocal, rsqrt, sigmoid, tanh.

Each function takes its parameter dataclass (frozen: iterations, clip ranges) and states
its domain; ``benchmarks.approx_errors`` records the measured error on that domain, in
float64 and under ``mpc``. Constants that depend on the fixed-point precision (the exp
cut-off) are derived from it, never hard-coded for one precision.

Reciprocal and rsqrt hold over wide ranges without per-layer scales: ``normalize`` finds
the binary exponent e of x by comparing x with every power of two of the domain in one
batched round (bits c_j = [x >= 2^j]), and forms the scale 2^-(e+1) (and its square root)
as a public linear combination of those bits, so x * 2^-(e+1) lies in [0.5, 1), where a
fixed initial guess and a few Newton steps converge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def clip(ops, x, lo: float, hi: float):
    """min(max(x, lo), hi) = lo + relu(x - lo) - relu(x - hi): one batched ReLU round."""
    both = ops.relu(ops.cat([ops.add_public(x, -lo), ops.add_public(x, -hi)], 0))
    n = ops.shape(x)[0]
    return ops.add_public(ops.sub(ops.narrow(both, 0, 0, n), ops.narrow(both, 0, n, n)), lo)


def stack_last(ops, x, m: int):
    """x (..., ) repeated m times along a new last dimension (local)."""
    s = ops.shape(x)
    return ops.cat([ops.reshape(x, s + (1,))] * m, -1)


def normalize(ops, x, lo: int, hi: int):
    """For x in [2^lo, 2^hi): (x * 2^-(e+1) in [0.5, 1), 2^-(e+1), 2^-(e+1)/2), e = floor(log2 x).
    Below 2^lo x is scaled as if e = lo; from 2^hi on as if e = hi - 1. The constants 2^j
    must be encodable: hi <= 31 - frac_bits (else the encoder raises, naming the value).
    Rounds: 1 (batched comparisons) + 2 (one product and its truncation)."""
    js = list(range(lo + 1, hi))
    if not js:
        w = 2.0 ** -(lo + 1)
        return ops.mul_public(x, w), w, math.sqrt(w)
    cmp = ops.add_public(stack_last(ops, x, len(js)), torch.tensor([-(2.0 ** j) for j in js]))
    below = ops.ltz(cmp)                              # [x < 2^j]; c_j = 1 - below_j
    w = [2.0 ** -(j + 1) for j in range(lo, hi)]
    sw = [math.sqrt(v) for v in w]
    # scale = w_lo + sum_j c_j (w_j - w_{j-1}) = w_{hi-1} - sum_j below_j (w_j - w_{j-1})
    dw = torch.tensor([w[i] - w[i - 1] for i in range(1, len(w))])
    dsw = torch.tensor([sw[i] - sw[i - 1] for i in range(1, len(sw))])
    scale = ops.add_public(ops.neg(ops.sum(ops.bit_scale(below, dw), -1)), w[-1])
    sscale = ops.add_public(ops.neg(ops.sum(ops.bit_scale(below, dsw), -1)), sw[-1])
    return ops.mul(x, scale), scale, sscale


@dataclass(frozen=True)
class ExpParams:
    """exp(x) ~ (1 + u + u^2 / 2)^(2^t), u = x / 2^t, after clipping x below at ``floor``
    (default: where exp drops under one ulp, -frac_bits * ln 2). PUMA's form is
    (1 + u)^(2^t); the second-order term cuts the error about tenfold for 3 more rounds.
    ``second_order=False`` gives PUMA's. Domain: x <= 0 (softmax after max subtraction).
    Cost: 1 ReLU round + 1 truncation [+ 3 rounds] + t squarings (2 rounds each)."""

    squarings: int = 5
    second_order: bool = True
    floor: float | None = None


def exp_neg(ops, x, frac_bits: int, p: ExpParams = ExpParams()):
    floor = p.floor if p.floor is not None else -frac_bits * math.log(2)
    x = ops.add_public(ops.relu(ops.add_public(x, -floor)), floor)   # max(x, floor)
    u = ops.mul_public(x, 2.0 ** -p.squarings)
    y = ops.add_public(u, 1.0)
    if p.second_order:
        y = ops.add(y, ops.mul_public(ops.square(u), 0.5))
    for _ in range(p.squarings):
        y = ops.square(y)
    return y


@dataclass(frozen=True)
class ReciprocalParams:
    """1/x for x in [2^lo, 2^hi) (x > 0): normalize, then Newton y <- y (2 - x y) from
    y0 = 2.9142 - 2 x on [0.5, 1). Cost: 3 + 1 + 4 * iterations + 2 rounds. Outside the
    range: below 2^lo too small but positive; above 2^hi it degrades (-10% at 1.37 * 2^hi),
    turns negative near 1.46 * 2^hi and to garbage from 2^(hi+2): clip first if needed."""

    lo: int = -10
    hi: int = 10
    iterations: int = 3


def reciprocal(ops, x, p: ReciprocalParams = ReciprocalParams()):
    xn, scale, _ = normalize(ops, x, p.lo, p.hi)
    y = ops.add_public(ops.mul_public(xn, -2.0), 2.9142)
    for _ in range(p.iterations):
        y = ops.mul(y, ops.add_public(ops.neg(ops.mul(xn, y)), 2.0))
    return ops.mul(y, scale)


@dataclass(frozen=True)
class RsqrtParams:
    """1/sqrt(x) for x in [2^lo, 2^hi): normalize, Newton y <- y (1.5 - (x/2) y^2) from the
    chord y0 = 1.8284 - 0.8284 x on [0.5, 1). Cost: 3 + 1 + 6 * iterations + 2 rounds.
    Outside the range: below 2^lo the result is too small but positive; above 2^hi it
    degrades (-30% at 2^(hi+1)) and turns to garbage from 2^(hi+2): clip first if needed."""

    lo: int = -10
    hi: int = 10
    iterations: int = 3


def rsqrt(ops, x, p: RsqrtParams = RsqrtParams()):
    xn, _, sscale = normalize(ops, x, p.lo, p.hi)
    both = ops.mul_public(ops.cat([xn, xn], 0), torch.tensor([-0.8284, -0.5]).reshape(
        (2,) + (1,) * (len(ops.shape(xn)) - 1)).repeat_interleave(ops.shape(xn)[0], 0))
    n = ops.shape(xn)[0]
    y = ops.add_public(ops.narrow(both, 0, 0, n), 1.8284)        # chord
    half = ops.narrow(both, 0, n, n)                             # -x/2, once
    for _ in range(p.iterations):
        y = ops.mul(y, ops.add_public(ops.mul(half, ops.square(y)), 1.5))
    return ops.mul(y, sscale)


@dataclass(frozen=True)
class SigmoidParams:
    """sigmoid(x) = s(|x|) or 1 - s(|x|) by sign, s(a) = 1 / (1 + exp(-a)): the
    reciprocal's argument stays in [1, 2], so no normalisation is needed. Domain: all x
    (saturates to 0/1 below one ulp)."""

    exp: ExpParams = ExpParams()
    iterations: int = 3


def sigmoid(ops, x, frac_bits: int, p: SigmoidParams = SigmoidParams()):
    neg = ops.ltz(x)
    a = ops.select(neg, ops.neg(x), x)                            # |x|
    d = ops.add_public(exp_neg(ops, ops.neg(a), frac_bits, p.exp), 1.0)   # in [1, 2]
    y = ops.add_public(ops.mul_public(d, -0.5), 1.4571)           # 1/d on [1, 2], chord
    for _ in range(p.iterations):
        y = ops.mul(y, ops.add_public(ops.neg(ops.mul(d, y)), 2.0))
    return ops.select(neg, ops.add_public(ops.neg(y), 1.0), y)


def tanh(ops, x, frac_bits: int, p: SigmoidParams = SigmoidParams()):
    """tanh(x) = 2 sigmoid(2x) - 1. Domain: all x."""
    return ops.add_public(ops.mul_public(sigmoid(ops, ops.mul_public(x, 2.0), frac_bits, p), 2.0),
                          -1.0)
