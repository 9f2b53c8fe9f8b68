"""CKKS parameter sets: named, checked against the 128-bit security table, depth planned.

A parameter set fixes the ring degree N, the coefficient-modulus primes (bit sizes) and
the scale. The HomomorphicEncryption.org table allows at most 109 / 218 / 438 / 881 total
modulus bits for N = 4096 / 8192 / 16384 / 32768 at 128-bit classical security; anything
over that is refused here, naming the limit (TenSEAL itself would only raise a generic
ValueError, or nothing). Each multiplication followed by a rescale consumes one middle
prime, so a set supports ``depth`` = (number of primes - 2) levels; ``check_depth``
refuses a plan that needs more, before any computation starts.
"""

from __future__ import annotations

from dataclasses import dataclass

SECURITY_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


class HeParamError(ValueError):
    """An insecure, unknown or too shallow parameter set."""


@dataclass(frozen=True)
class ParamSet:
    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def depth(self) -> int:
        """Multiplications (each followed by a rescale) the set supports."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def scale(self) -> float:
        return float(2 ** self.scale_bits)


def check_modulus_bits(name: str, n: int, bit_sizes) -> None:
    """Refuse a ring degree or a total coefficient modulus outside the 128-bit table,
    naming the limit (CKKS and BFV sets alike)."""
    if n not in SECURITY_128:
        raise HeParamError(f"parameter set {name!r}: N = {n} is not one of "
                           f"{sorted(SECURITY_128)} (128-bit security table)")
    limit = SECURITY_128[n]
    total = sum(bit_sizes)
    if total > limit:
        raise HeParamError(f"parameter set {name!r} is insecure: {total} coefficient-"
                           f"modulus bits exceed the 128-bit limit of {limit} for N = {n}")
    if len(bit_sizes) < 2:
        raise HeParamError(f"parameter set {name!r} needs at least two primes")


def check_security(ps: ParamSet) -> ParamSet:
    """Refuse anything outside the 128-bit table, naming the limit."""
    check_modulus_bits(ps.name, ps.poly_modulus_degree, ps.coeff_mod_bit_sizes)
    middle = ps.coeff_mod_bit_sizes[1:-1]
    if any(b != ps.scale_bits for b in middle):
        raise HeParamError(f"parameter set {ps.name!r}: middle primes {middle} must equal the "
                           f"scale bits {ps.scale_bits} so that rescaling keeps the scale")
    if ps.coeff_mod_bit_sizes[0] < ps.scale_bits + 10:
        raise HeParamError(f"parameter set {ps.name!r}: the first prime must leave at least "
                           "10 bits above the scale for the integer part")
    return ps


def check_depth(ps: ParamSet, needed: int, what: str) -> None:
    """Refuse a computation that would need more levels than the set has."""
    if needed > ps.depth:
        raise HeParamError(f"{what} needs multiplicative depth {needed} but parameter set "
                           f"{ps.name!r} supports {ps.depth}; choose a deeper set")


PARAM_SETS = {ps.name: check_security(ps) for ps in (
    ParamSet("n8192-d2", 8192, (60, 40, 40, 60), 40),
    ParamSet("n8192-d1", 8192, (60, 40, 60), 40),
    ParamSet("n16384-d4", 16384, (60, 50, 50, 50, 50, 60), 50),
)}


def get_param_set(name: str) -> ParamSet:
    try:
        return PARAM_SETS[name]
    except KeyError:
        raise HeParamError(f"unknown HE parameter set {name!r}; known: {sorted(PARAM_SETS)}") from None
