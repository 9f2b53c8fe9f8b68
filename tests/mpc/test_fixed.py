"""mpc.fixed: fixed-point encoding in Z_2^64 is exact where it claims to be, and refuses
what it cannot encode."""

from __future__ import annotations

import math

import pytest
import torch

from mpc import fixed
from mpc.fixed import EncodingError

FRAC_BITS = (16, 18)
WINDOW = 300  # raw values checked on each side of every multiple of the scale


def _multiples(f: int) -> list[int]:
    """Integers k (negatives, zero, small, and the largest ones accepted) for raw = k * 2^f."""
    top = int(fixed.max_abs(f)) - 1
    return sorted({0, 1, -1, 2, -2, 3, -3, 7, -7, 100, -100, 1000, -1000,
                   top // 2, -top // 2, top, -top})


@pytest.mark.parametrize("f", FRAC_BITS)
def test_decode_encode_exact_around_every_multiple_of_the_scale(f):
    scale = 2 ** f
    ks = _multiples(f)
    offsets = torch.arange(-WINDOW, WINDOW + 1, dtype=torch.int64)
    raw = torch.cat([k * scale + offsets for k in ks])
    # keep only raw values strictly inside the accepted range (|k| = top with offset > 0
    # may still be inside, the bound is |x| < 2^(31 - f))
    raw = raw[raw.abs() < int(fixed.max_abs(f)) * scale]
    assert raw.numel() > len(ks) * WINDOW  # the window really is exhaustive
    x = fixed.decode(raw, f)
    assert x.dtype == torch.float64
    # decode(raw) == raw / 2^f exactly (compare as exact rationals through Python ints)
    for r, v in zip(raw.tolist(), x.tolist()):
        assert v == r / scale and v * scale == r, (r, v)
    back = fixed.encode(x, f)
    assert back.dtype == torch.int64
    assert torch.equal(back, raw)


@pytest.mark.parametrize("f", FRAC_BITS)
def test_encode_rounds_to_nearest(f):
    ulp = fixed.ulp(f)
    assert ulp == 2.0 ** -f
    base = torch.tensor([0.0, 1.0, -1.0, 3.5, -3.5, 100.25], dtype=torch.float64)
    # a third and two thirds of an ulp above the base: nearest is base and base + 1 ulp
    lo = fixed.encode(base + ulp / 3, f)
    hi = fixed.encode(base + 2 * ulp / 3, f)
    exact = (base * 2 ** f).to(torch.int64)
    assert torch.equal(lo, exact)
    assert torch.equal(hi, exact + 1)
    # the error of encode is at most half an ulp
    gen = torch.Generator().manual_seed(11)
    vals = (torch.rand(10_000, generator=gen, dtype=torch.float64) - 0.5) * 200
    err = (fixed.decode(fixed.encode(vals, f), f) - vals).abs().max().item()
    assert err <= ulp / 2


@pytest.mark.parametrize("f", FRAC_BITS)
@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                        (float("-inf"), "-inf")])
def test_non_finite_raises_naming_the_value(f, bad, shown):
    x = torch.tensor([0.5, bad, 1.0], dtype=torch.float64)
    with pytest.raises(EncodingError, match=f"non-finite value {shown}") as info:
        fixed.encode(x, f)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("f", FRAC_BITS)
def test_out_of_range_raises_naming_the_value(f):
    bound = fixed.max_abs(f)
    assert bound == 2.0 ** (31 - f)
    # the product of two accepted values, at scale 2^2f, stays inside the truncation bound
    assert (bound * 2 ** f) ** 2 <= 2 ** 62
    for v in (bound, -bound, bound * 1.5, -3 * bound):
        with pytest.raises(EncodingError) as info:
            fixed.encode(torch.tensor([0.0, v], dtype=torch.float64), f)
        msg = str(info.value)
        assert f"{abs(v):.6g}" in msg, msg
        assert f"frac_bits={f}" in msg
    # just inside the bound is accepted, on both sides
    inside = math.nextafter(bound, 0.0)
    raw = fixed.encode(torch.tensor([inside, -inside], dtype=torch.float64), f)
    assert raw.tolist() == [round(inside * 2 ** f), -round(inside * 2 ** f)]


def test_explicit_limit_and_empty_tensor():
    f = 16
    # a caller-given limit replaces the default bound (the bias path encodes at 2f)
    with pytest.raises(EncodingError, match="outside"):
        fixed.encode(torch.tensor([2.0]), f, limit=2.0)
    assert fixed.encode(torch.tensor([1.99], dtype=torch.float64), 2 * f, limit=2.0).item() == round(1.99 * 2 ** 32)
    assert fixed.encode(torch.empty(0), f).numel() == 0


def test_decode_refuses_non_ring_dtypes():
    with pytest.raises(TypeError, match="int64"):
        fixed.decode(torch.tensor([1.0]), 16)
    with pytest.raises(TypeError, match="int64"):
        fixed.decode(torch.tensor([1], dtype=torch.int32), 16)


def test_out_of_range_negative_value_is_named_with_its_sign():
    with pytest.raises(EncodingError, match="value -50000 "):
        fixed.encode(torch.tensor([1.0, -50000.0], dtype=torch.float64), 16)
