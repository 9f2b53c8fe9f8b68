"""Fixed-point encoding in Z_2^64 (torch int64, arithmetic wraps modulo 2^64).

A real x is the ring element round(x * 2^f); decoding divides the signed raw value by 2^f
in float64, which is exact for |raw| < 2^53 (no floor-division surprises on negatives).
Encoding refuses NaN, infinities and values whose raw form would not fit the range that
products and truncation need (|x| * 2^f < 2^(62 - f)) rather than wrapping silently.
"""

from __future__ import annotations

import torch

RING_BITS = 64


class EncodingError(ValueError):
    """A value that cannot be encoded in fixed point without wrapping."""


def max_abs(frac_bits: int) -> float:
    """Largest |x| accepted by ``encode``: its product with another such value, at scale
    2^(2f), stays inside the truncation bound 2^62."""
    return float(2 ** (31 - frac_bits))


def encode(x: torch.Tensor, frac_bits: int, *, limit: float | None = None) -> torch.Tensor:
    """Encode a float tensor; raise ``EncodingError`` naming the offending value."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if not torch.isfinite(x).all():
        bad = x[~torch.isfinite(x)].flatten()[0].item()
        raise EncodingError(f"cannot encode non-finite value {bad}")
    bound = max_abs(frac_bits) if limit is None else limit
    if x.numel() and x.abs().max().item() >= bound:
        worst = x.flatten()[x.abs().flatten().argmax()].item()
        raise EncodingError(f"value {worst:.6g} outside the fixed-point range "
                            f"|x| < {bound:.6g} (frac_bits={frac_bits})")
    return torch.round(x * float(2 ** frac_bits)).to(torch.int64)


def decode(raw: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Signed ring elements to float64."""
    if raw.dtype != torch.int64:
        raise TypeError(f"decode expects int64 ring elements, got {raw.dtype}")
    return raw.to(torch.float64) / float(2 ** frac_bits)


def ulp(frac_bits: int) -> float:
    return 2.0 ** -frac_bits
