"""Activation functions written once against Ops: GeLU (three forms) and SiLU.

Piecewise functions compare the input with every breakpoint in one batched sign test,
evaluate each polynomial piece on a clipped input (so that no power overflows the
truncation bound), and combine the pieces with one batched select:
  f(x) = p_0 [x >= t_0] + sum_k (p_k - p_{k-1}) [x >= t_k]  (p_k: the piece right of t_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from approximations.core import SigmoidParams, clip, stack_last, tanh


def _horner_powers(ops, x, degree: int) -> dict[int, object]:
    """x^1 .. x^degree with products batched by depth (x^2; x^3, x^4; x^5, x^6)."""
    p = {1: x, 2: ops.square(x)}
    if degree >= 3:
        both = ops.mul(ops.cat([p[2], p[2]], 0), ops.cat([x, p[2]], 0))
        n = ops.shape(x)[0]
        p[3], p[4] = ops.narrow(both, 0, 0, n), ops.narrow(both, 0, n, n)
    if degree >= 5:
        both = ops.mul(ops.cat([p[4], p[4]], 0), ops.cat([x, p[2]], 0))
        p[5], p[6] = ops.narrow(both, 0, 0, n), ops.narrow(both, 0, n, n)
    return p


def _polys(ops, powers, polys: list[dict[int, float]]):
    """Evaluate several polynomials on the same powers with one truncation round: every
    coefficient product in one batched public multiplication."""
    degrees = sorted({k for c in polys for k in c if k})
    n = len(degrees)
    stack = ops.cat([ops.reshape(powers[k], ops.shape(powers[k]) + (1,)) for k in degrees], -1)
    stack = ops.cat([stack] * len(polys), -1)                  # (..., len(polys) * n)
    coeffs = torch.tensor([c.get(k, 0.0) for c in polys for k in degrees], dtype=torch.float64)
    terms = ops.mul_public(stack, coeffs)
    return [ops.add_public(ops.sum(ops.narrow(terms, -1, i * n, n), -1), c.get(0, 0.0))
            for i, c in enumerate(polys)]


def piecewise(ops, x, breakpoints: list[float], pieces: list):
    """pieces[k] on [t_k, t_{k+1}) (t = breakpoints; the last piece extends to +inf) and 0
    left of t_0: one batched sign test and one batched select."""
    m = len(breakpoints)
    ge_below = ops.ltz(ops.add_public(stack_last(ops, x, m), torch.tensor([-t for t in breakpoints])))
    diffs = [pieces[0]] + [ops.sub(pieces[k], pieces[k - 1]) for k in range(1, m)]
    stacked = ops.cat([ops.reshape(d, ops.shape(d) + (1,)) for d in diffs], -1)
    zero = ops.mul_public(stacked, 0.0)
    return ops.sum(ops.select(ge_below, zero, stacked), -1)      # keep where x >= t_k


@dataclass(frozen=True)
class GeluPumaParams:
    """PUMA's GeLU: 0 below -4; a cubic on [-4, -1.95); a degree-6 polynomial on
    [-1.95, 3]; x above 3. Pieces are evaluated on x clipped to [clip_lo, clip_hi].
    Domain: all x. Cost: 1 clip round, 6 rounds of powers, 1 truncation for all
    coefficients, 1 comparison round (3 tests), 1 select round: 10 rounds. PUMA publishes
    max < 0.0141; measured here 0.0199 just below x = 3, where the sextic overshoots (0.0105
    up to x = 2.95); see benchmarks/results/approximations.md. At 16 fractional bits the
    small x^6 coefficient is encoded to 0.3%, which adds up to 0.004 near x = 3."""

    clip_lo: float = -4.0
    clip_hi: float = 3.0


CUBIC = {3: -0.011034134030615728, 2: -0.11807612951181953, 1: -0.42226581151983866,
         0: -0.5054031199708174}
SEXTIC = {6: 0.0018067462606141187, 4: -0.037688200365904236, 2: 0.3603292692789629,
          1: 0.5, 0: 0.008526321541038084}


def gelu_puma(ops, x, p: GeluPumaParams = GeluPumaParams()):
    xc = clip(ops, x, p.clip_lo, p.clip_hi)
    pw = _horner_powers(ops, xc, 6)
    cubic, sextic = _polys(ops, pw, [CUBIC, SEXTIC])
    return piecewise(ops, x, [-4.0, -1.95, 3.0], [cubic, sextic, x])


@dataclass(frozen=True)
class GeluQuadParams:
    """MPCFormer's "Quad" GeLU: 0.125 x^2 + 0.5 x + 0.25. Meant for distilled models: its
    error against GeLU grows away from 0 (reported, not hidden). Cost: 2 rounds."""


def gelu_quad(ops, x, p: GeluQuadParams = GeluQuadParams()):
    return ops.add_public(ops.add(ops.mul_public(ops.square(x), 0.125), ops.mul_public(x, 0.5)), 0.25)


@dataclass(frozen=True)
class GeluTanhParams:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) on x clipped to [-clip, clip] for the
    cubic (GeLU is x or 0 beyond it to within 1e-10). Domain: |x| <= 25 for errors below
    1e-3; the error grows with |x| (a few ulps of tanh times x: -0.02 at x = -1000)."""

    clip: float = 8.0
    sigmoid: SigmoidParams = SigmoidParams()


def gelu_tanh(ops, x, frac_bits: int, p: GeluTanhParams = GeluTanhParams()):
    xc = clip(ops, x, -p.clip, p.clip)
    inner = ops.mul_public(ops.add(xc, ops.mul_public(ops.mul(ops.square(xc), xc), 0.044715)),
                           math.sqrt(2 / math.pi))
    t = tanh(ops, inner, frac_bits, p.sigmoid)
    return ops.mul(ops.mul_public(x, 0.5), ops.add_public(t, 1.0))


# GeLU's even part q(x) = (x/2) erf(x/sqrt 2) as r(v), v = x^2/16, on |x| <= 4: a degree-7
# polynomial fitted by iteratively reweighted least squares on 40001 points of [0, 4]
# (scipy's erf); max error 1.66e-4 in float64.
ERF_EVEN = (0.00016557155164511117, 6.359144624438333, -16.449935746635234,
            35.52896434445518, -52.32885090393256, 48.91603993574835, -25.887828147259057,
            5.862339434451879)


@dataclass(frozen=True)
class GeluErfParams:
    """GeLU(x) = x/2 + q(x) with q(x) = (x/2) erf(x/sqrt 2), even and smooth, so q is a
    polynomial r in v = x^2/T^2 on [-T, T] (T = 4, Horner form: each step multiplies by
    v <= 1, so truncation errors do not grow); GeLU is 0 below -T and x above T (jumps of
    1.3e-4). Protocol: one batched sign test [x < -T], [x < T]; x clipped to [-T, T] by one
    product with the in-range bit; v (1 square); Horner (6 products); one batched product
    selects the middle piece and x above T. Rounds: 10 on top of the sign test (see the
    round table in tests). Max error 2e-4 (float64) plus about 1e-4 at 16 fractional bits;
    domain: all x whose square fits the ring (|x| < 2^20 at 16 fractional bits)."""

    limit: float = 4.0
    coeffs: tuple = ERF_EVEN


def gelu_erf(ops, x, p: GeluErfParams = GeluErfParams()):
    t = p.limit
    s = ops.shape(x)
    bits = ops.bit_value(ops.ltz(ops.add_public(stack_last(ops, x, 2), torch.tensor([t, -t]))))
    below = ops.reshape(ops.narrow(bits, -1, 0, 1), s)              # [x < -T]
    inside = ops.reshape(ops.narrow(bits, -1, 1, 1), s)             # [x < T]
    mid = ops.sub(inside, below)                                     # [-T <= x < T]
    above = ops.add_public(ops.neg(inside), 1.0)                     # [x >= T]
    # clip: x inside, +-T outside: x mid + T above - T below
    xc = ops.add(ops.mul(x, mid), ops.mul_public(ops.sub(above, below), t))
    v = ops.mul_public(ops.square(xc), 1.0 / (t * t))
    c = p.coeffs
    acc = ops.add_public(ops.mul_public(v, c[-1]), c[-2])
    for k in range(len(c) - 3, -1, -1):
        acc = ops.add_public(ops.mul(acc, v), c[k])
    middle = ops.add(ops.mul_public(xc, 0.5), acc)
    n = s[0]
    both = ops.mul(ops.cat([middle, x], 0), ops.cat([mid, above], 0))
    return ops.add(ops.narrow(both, 0, 0, n), ops.narrow(both, 0, n, n))


@dataclass(frozen=True)
class SiluParams:
    """Piecewise SiLU (MPCache's harness): 0 below -8; -0.30675 - 0.08198 x - 0.0055466 x^2
    on [-8, -4); 0.0085064 + 0.5 x + 0.228143 x^2 - 0.011113 x^4 + 0.00027438 x^6 on
    [-4, 4]; x above 4. Pieces on x clipped to [-8, 4]. Domain: all x. The published
    formula's own error is 0.072 (its jump to x at 4). Cost: 10 rounds, as GeLU."""

    clip_lo: float = -8.0
    clip_hi: float = 4.0


SILU_LEFT = {0: -0.30675, 1: -0.08198, 2: -0.0055466}
SILU_MID = {0: 0.0085064, 1: 0.5, 2: 0.228143, 4: -0.011113, 6: 0.00027438}


def silu(ops, x, p: SiluParams = SiluParams()):
    xc = clip(ops, x, p.clip_lo, p.clip_hi)
    pw = _horner_powers(ops, xc, 6)
    left, mid = _polys(ops, pw, [SILU_LEFT, SILU_MID])
    return piecewise(ops, x, [-8.0, -4.0, 4.0], [left, mid, x])
