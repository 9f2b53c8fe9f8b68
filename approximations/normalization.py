"""Softmax and LayerNorm written once against Ops."""

from __future__ import annotations

from dataclasses import dataclass, field

from approximations.core import (ExpParams, ReciprocalParams, RsqrtParams, exp_neg,
                                 reciprocal, rsqrt_steps)


@dataclass(frozen=True)
class SoftmaxParams:
    """PUMA-style softmax over the last dimension: subtract the row max (tree of maxima,
    log2(n) rounds), exp of the non-positive differences (clipped where exp drops below one
    ulp), one reciprocal of the row sum (in [1, n], normalised), one broadcast product.
    Domain: any finite input within the fixed-point range, rows up to 4096 wide (the row sum
    must stay inside the reciprocal's range). Entries below the exp floor keep one or two
    ulps instead of 0, so the error grows with the width (about 0.005 at 128, 0.008 at 384)."""

    exp: ExpParams = ExpParams()
    reciprocal: ReciprocalParams = field(default_factory=lambda: ReciprocalParams(lo=0, hi=12,
                                                                                  iterations=2))


def softmax(ops, x, frac_bits: int, p: SoftmaxParams = SoftmaxParams()):
    top = ops.max_last(x)                                    # (..., 1)
    e = exp_neg(ops, ops.sub(x, top), frac_bits, p.exp)       # (..., n), in (0, 1]
    inv = reciprocal(ops, ops.sum(e, -1, keepdim=True), p.reciprocal)
    return ops.mul(e, inv)


@dataclass(frozen=True)
class Softmax2QuadParams:
    """MPCFormer's 2Quad: (x + c)^2 / sum (x + c)^2, c = 5. Meant for distilled models;
    its error against softmax is large (reported). Domain: rows whose sum of (x + c)^2 lies
    in the reciprocal's range."""

    c: float = 5.0
    reciprocal: ReciprocalParams = ReciprocalParams(lo=-4, hi=15, iterations=3)


def softmax_2quad(ops, x, p: Softmax2QuadParams = Softmax2QuadParams()):
    q = ops.square(ops.add_public(x, p.c))
    return ops.mul(q, reciprocal(ops, ops.sum(q, -1, keepdim=True), p.reciprocal))


@dataclass(frozen=True)
class LayerNormParams:
    """(x - mean) * rsqrt(var + eps) over the last dimension (no affine part here; the
    model applies its weights). rsqrt is normalised, so variances from 2^lo to 2^hi work
    without per-layer scales (MiniLM's span about 0.004 to 130)."""

    eps: float = 1e-12
    rsqrt: RsqrtParams = RsqrtParams(lo=-10, hi=10, iterations=2)


def layernorm(ops, x, p: LayerNormParams = LayerNormParams()):
    """Rounds: mean 1 + square 2 + mean 1 + rsqrt without its final product (the centred
    row takes the square-root scale inside the first Newton product) 3 + 4 * iterations +
    the product of the scaled row and y 2."""
    mu = ops.mean(x, -1, keepdim=True)
    d = ops.sub(x, mu)
    var = ops.mean(ops.square(d), -1, keepdim=True)
    y, _, ds = rsqrt_steps(ops, ops.add_public(var, p.eps), p.rsqrt, ride=d)
    return ops.mul(ds, y)
