"""mpc.protocol.truncate (TruncAPr): inside |x| < 2^62 the result is floor(x / 2^f) plus 0
or 1, with P(+1) = (x mod 2^f) / 2^f; outside the bound it fails often (REFERENCES.md,
"Fixed-point truncation in two-party sharing").

The protocol's randomness is not seeded, so the statistical checks use wide margins (at
least 5 standard deviations)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc import protocol
from tests.mpc.harness import TempPair, needs_of, ring_random, split, trunc_need

BOUND = 2 ** 62
FRAC_BITS = (16, 18)


def truncate_shared(x: torch.Tensor, f: int, gen: torch.Generator | None):
    """Run the two-party truncation of the (seeded) shares of x; return the ring result."""
    with TempPair(needs_of(trunc_need("t", x.shape, f)), frac_bits=f) as pair:
        xs = split(x, gen)
        y0, y1 = pair.run(lambda p: protocol.truncate(p, xs[p.index], "t"))
        assert all(s.remaining == 0 for s in pair.stores)
    return y0 + y1


def inside_values(gen: torch.Generator, f: int) -> torch.Tensor:
    """Random x in [-2^62, 2^62) plus the edges: near +-2^62, near 0, multiples of 2^f."""
    uniform = ring_random((20_000,), gen) >> 1               # uniform in [-2^62, 2^62)
    d = torch.arange(0, 600, dtype=torch.int64)
    near_top = (BOUND - 1) - d                               # 2^62 - 1, 2^62 - 2, ...
    near_bottom = -BOUND + d                                 # -2^62 (included), -2^62 + 1, ...
    near_zero = torch.arange(-3 * 2 ** f, 3 * 2 ** f, 97, dtype=torch.int64)
    mults = torch.arange(-50, 51, dtype=torch.int64) << f
    return torch.cat([uniform, near_top, near_bottom, near_zero, mults])


@pytest.mark.parametrize("f", FRAC_BITS)
@pytest.mark.parametrize("random_split", [False, True], ids=["x-0", "random"])
def test_error_is_zero_or_one_inside_the_bound(f, random_split):
    gen = torch.Generator().manual_seed(100 + f)
    x = inside_values(gen, f)
    assert int(x.max()) == BOUND - 1 and int(x.min()) == -BOUND
    y = truncate_shared(x, f, gen if random_split else None)
    err = y - (x >> f)                                       # >> on int64 is floor division
    bad = ~((err == 0) | (err == 1))
    assert not bad.any(), f"{int(bad.sum())} failures, e.g. x={x[bad][:3].tolist()} err={err[bad][:3].tolist()}"
    # multiples of 2^f are exact (P(+1) = 0), and the +1 does occur elsewhere
    exact = (x & (2 ** f - 1)) == 0
    assert (err[exact] == 0).all()
    assert (err == 1).any()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=st.lists(st.integers(-BOUND, BOUND - 1), min_size=1, max_size=40),
       f=st.sampled_from(FRAC_BITS))
def test_error_is_zero_or_one_property(xs, f):
    x = torch.tensor(xs, dtype=torch.int64)
    err = truncate_shared(x, f, None) - (x >> f)
    assert ((err == 0) | (err == 1)).all(), list(zip(xs, err.tolist()))


@pytest.mark.parametrize("f", FRAC_BITS)
def test_rounding_is_unbiased(f):
    """For x with fractional part phi, the mean error over many independent runs is phi."""
    copies = 4000
    phis = (0.125, 0.25, 0.5, 0.75, 0.875)
    gen = torch.Generator().manual_seed(7)
    bases = (ring_random((len(phis),), gen) >> 2) & ~(2 ** f - 1)     # multiples of 2^f
    offs = torch.tensor([int(p * 2 ** f) for p in phis], dtype=torch.int64)
    x = (bases + offs).repeat_interleave(copies)
    err = (truncate_shared(x, f, gen) - (x >> f)).reshape(len(phis), copies).to(torch.float64)
    means = err.mean(dim=1)
    sigma = torch.sqrt(torch.tensor(phis) * (1 - torch.tensor(phis)) / copies)
    for phi, mean, s in zip(phis, means.tolist(), sigma.tolist()):
        assert abs(mean - phi) < max(6 * s, 0.03), (f, phi, mean)
    # and over random x: mean error minus mean fractional part is near zero
    x = ring_random((20_000,), gen) >> 1
    err = (truncate_shared(x, f, gen) - (x >> f)).to(torch.float64)
    frac = (x & (2 ** f - 1)).to(torch.float64) / 2 ** f
    assert abs((err - frac).mean().item()) < 0.02                       # sigma ~ 0.003


@pytest.mark.parametrize("f", FRAC_BITS)
@pytest.mark.parametrize("sign", [1, -1])
def test_outside_the_bound_fails_often(f, sign):
    """|x| about 1.5 * 2^62: about a quarter of the elements are wrong (not 0 or 1 ulp)."""
    gen = torch.Generator().manual_seed(11)
    jitter = torch.randint(-2 ** 40, 2 ** 40, (2000,), dtype=torch.int64, generator=gen)
    x = sign * (3 * 2 ** 61) + jitter
    err = truncate_shared(x, f, gen) - (x >> f)
    failures = (~((err == 0) | (err == 1))).to(torch.float64).mean().item()
    assert failures > 0.10, failures
    # a failure is gross: off by a multiple of 2^(63 - f) (the lost carry), not by an ulp
    wrong = err[(err != 0) & (err != 1)]
    assert ((wrong.abs() >= 2 ** (63 - f) - 1)).all()
