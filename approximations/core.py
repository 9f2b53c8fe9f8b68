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


def exponent_scales(ops, x, lo: int, hi: int, factors=(1.0,)):
    """From one batch of comparisons c_j = [x >= 2^j]: the shares f * 2^-(e+1) for every
    public f in ``factors``, and 2^-(e+1)/2 = sqrt(2^-(e+1)), e = floor(log2 x) clamped to
    [lo, hi - 1] (below 2^lo scaled as if e = lo; from 2^hi on as if e = hi - 1). Each is a
    public linear combination of the bits (local once they exist). The constants 2^j must be
    encodable: hi <= 31 - frac_bits (else the encoder raises, naming the value).
    Rounds: 1 (batched comparisons)."""
    js = list(range(lo + 1, hi))
    w = [2.0 ** -(j + 1) for j in range(lo, hi)]
    sw = [math.sqrt(v) for v in w]
    if not js:
        zero = ops.sub(x, x)
        return [ops.add_public(zero, f * w[0]) for f in factors], ops.add_public(zero, sw[0])
    cmp = ops.add_public(stack_last(ops, x, len(js)), torch.tensor([-(2.0 ** j) for j in js]))
    below = ops.ltz(cmp)                              # [x < 2^j]; c_j = 1 - below_j

    def combo(v):      # v_lo + sum_j c_j (v_j - v_{j-1}) = v_{hi-1} - sum_j below_j (v_j - v_{j-1})
        dv = torch.tensor([v[i] - v[i - 1] for i in range(1, len(v))])
        return ops.add_public(ops.neg(ops.sum(ops.bit_scale(below, dv), -1)), v[-1])
    return [combo([f * v for v in w]) for f in factors], combo(sw)


def normalize(ops, x, lo: int, hi: int):
    """For x in [2^lo, 2^hi): (x * 2^-(e+1) in [0.5, 1), 2^-(e+1), 2^-(e+1)/2), e = floor(log2 x);
    see ``exponent_scales``. Rounds: 1 (batched comparisons) + 2 (one product and its
    truncation)."""
    (scale,), sscale = exponent_scales(ops, x, lo, hi)
    return ops.mul(x, scale), scale, sscale


@dataclass(frozen=True)
class ExpParams:
    """exp(x) ~ (1 + u + u^2 / 2)^(2^t), u = x / 2^t, after clipping x below at ``floor``
    (default: where exp drops under one ulp, -frac_bits * ln 2). PUMA's form is
    (1 + u)^(2^t); the second-order term cuts the error about tenfold for 2 more rounds.
    ``second_order=False`` gives PUMA's. Domain: x <= 0 (softmax after max subtraction).
    Cost: 1 ReLU round + 1 truncation (u, and u / sqrt(2) with it) [+ 2 rounds: the square
    of u / sqrt(2) is u^2 / 2] + t squarings (2 rounds each)."""

    squarings: int = 5
    second_order: bool = True
    floor: float | None = None


def exp_neg(ops, x, frac_bits: int, p: ExpParams = ExpParams()):
    floor = p.floor if p.floor is not None else -frac_bits * math.log(2)
    x = ops.add_public(ops.relu(ops.add_public(x, -floor)), floor)   # max(x, floor)
    c = 2.0 ** -p.squarings
    if p.second_order:            # u and u / sqrt(2) in one truncation
        k = ops.shape(x)[-1]
        both = ops.mul_public(ops.cat([x, x], -1),
                              torch.tensor([c] * k + [c / math.sqrt(2.0)] * k))
        u = ops.narrow(both, -1, 0, k)
        y = ops.add(ops.add_public(u, 1.0), ops.square(ops.narrow(both, -1, k, k)))
    else:
        y = ops.add_public(ops.mul_public(x, c), 1.0)
    for _ in range(p.squarings):
        y = ops.square(y)
    return y


@dataclass(frozen=True)
class ReciprocalParams:
    """1/x for x in [2^lo, 2^hi) (x > 0): normalize, then Newton y <- y (2 - x y) from
    y0 = 2.9142 - 2 x on [0.5, 1); the last step multiplies y * scale (formed in the same
    batched product as x y) instead of y, so no product by the scale follows. Cost:
    3 + 4 * iterations rounds. Outside the range: below 2^lo too small but positive; above
    2^hi it degrades (-10% at 1.37 * 2^hi), turns negative near 1.46 * 2^hi and to garbage
    from 2^(hi+2): clip first if needed."""

    lo: int = -10
    hi: int = 10
    iterations: int = 3


def reciprocal(ops, x, p: ReciprocalParams = ReciprocalParams()):
    xn, scale, _ = normalize(ops, x, p.lo, p.hi)
    y = ops.add_public(ops.mul_public(xn, -2.0), 2.9142)
    if p.iterations == 0:
        return ops.mul(y, scale)
    for _ in range(p.iterations - 1):
        y = ops.mul(y, ops.add_public(ops.neg(ops.mul(xn, y)), 2.0))
    k = ops.shape(xn)[-1]
    both = ops.mul(ops.cat([xn, y], -1), ops.cat([y, scale], -1))       # x y and y * scale
    return ops.mul(ops.narrow(both, -1, k, k),
                   ops.add_public(ops.neg(ops.narrow(both, -1, 0, k)), 2.0))


@dataclass(frozen=True)
class RsqrtParams:
    """1/sqrt(x) for x in [2^lo, 2^hi): with u = x * 2^-(e+1) in [0.5, 1) (``exponent_scales``),
    Newton y <- y (1.5 - (u/2) y^2) from the minimax line y0 = 1.78758 - 0.80992 u (relative
    error 2.2e-2, then 7.4e-4 and 8.3e-7 after one and two steps), times 2^-(e+1)/2.
    Steps (rounds): comparisons 1; u/2 and the line, both as x times a public multiple of the
    scale, in one batched product 2; each Newton step 4: one batched product gives y^2,
    y (u/2) and 1.5 y (y times a sharing of the constant), one more gives (y u/2) y^2;
    the final product by the square-root scale 2 (in LayerNorm it rides in the first Newton
    product instead). Cost: 5 + 4 * iterations rounds. Outside the range: below 2^lo the
    result is too small but positive; above 2^hi it degrades (-1.5% at 1.46 * 2^hi, -50% at
    2^(hi+1)), turns negative near 2.5 * 2^hi and to garbage from 2^(hi+2): clip first if
    needed."""

    lo: int = -10
    hi: int = 10
    iterations: int = 2


RSQRT_LINE = (1.78758, 0.80992)


def rsqrt_steps(ops, x, p: RsqrtParams = RsqrtParams(), ride=None):
    """(y ~ 1/sqrt(u), the square-root scale s, ride * s or None), with 1/sqrt(x) = y * s.
    ``ride`` (..., m), broadcast against x (..., 1): multiplied by s inside the first Newton
    product (no round of its own)."""
    a, b = RSQRT_LINE
    (half, line), sscale = exponent_scales(ops, x, p.lo, p.hi, (0.5, -b))
    k = ops.shape(x)[-1]
    both = ops.mul(ops.cat([x, x], -1), ops.cat([half, line], -1))
    h = ops.narrow(both, -1, 0, k)                                   # u/2
    y = ops.add_public(ops.narrow(both, -1, k, k), a)                 # line
    rode = None
    for step in range(p.iterations):
        lhs, rhs = [y, y, y], [y, h, ops.add_public(ops.sub(y, y), 1.5)]
        if step == 0 and ride is not None:
            m = ops.shape(ride)[-1]
            lhs.append(ride)
            rhs.append(ops.cat([sscale] * m, -1) if k == 1 else sscale)
        prod = ops.mul(ops.cat(lhs, -1), ops.cat(rhs, -1))
        yy, yh, y15 = (ops.narrow(prod, -1, i * k, k) for i in range(3))
        if step == 0 and ride is not None:
            rode = ops.narrow(prod, -1, 3 * k, ops.shape(ride)[-1])
        y = ops.sub(y15, ops.mul(yh, yy))
    if ride is not None and rode is None:
        rode = ops.mul(ride, sscale)
    return y, sscale, rode


def rsqrt(ops, x, p: RsqrtParams = RsqrtParams()):
    y, sscale, _ = rsqrt_steps(ops, x, p)
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
