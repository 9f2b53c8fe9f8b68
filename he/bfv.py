"""BFV with plaintext modulus t = 2^48 through ``tenseal.sealapi``: exact, perfectly masked
products for the ``hybrid`` protocol's offline phase.

Why this route (REFERENCES.md, HE section): a CKKS mask must stay under the float64
decoding budget, which leaves too few bits to hide both the client's mask r and W r. BFV
computes exactly modulo t, so the server can mask W r with s uniform modulo t (perfect
hiding). Reduction modulo a power of two is a ring map Z_2^64 -> Z_t, and multiplying by
2^LIFT lifts it back: 2^16 (z - s) = 2^16 W r + 2^64 K = 2^16 W r in Z_2^64, so shares of
W r modulo t become exact ring shares of 2^16 W r, with no wrap bit to compute. The price
is 16 bits of head room: the product is rescaled by f + 16 bits afterwards.

Parameter set ``bfv-n8192-t48``: N = 8192, t = 2^48 (no batching: values sit in the
polynomial coefficients, ``he.coeff_matmul``), three 60-bit data primes each = 1 mod 2^48,
so q = 1 mod t and a plaintext product adds a noise term of size |K| only (not
(q mod t) |K|, which would be ~2^79); a 30-bit special prime; 210 bits <= 218 (128-bit
table, ``he.params.check_modulus_bits``).

Circuit privacy (``finish_for_client``): before a ciphertext computed from the server's
weights goes back, the server adds (1) a plaintext polynomial uniform modulo t in every
coefficient (the share mask; it also hides the partial sums in the coefficients the
client does not need), (2) a fresh public-key encryption of zero (re-randomises c1, which
is otherwise a known linear function of the weights), (3) a flood: c0 += E with E uniform
in [-2^FLOOD_BITS, 2^FLOOD_BITS) per coefficient, written into the ciphertext through its
SEAL serialisation (sealapi has no call that adds a raw polynomial), then (4) drops one
prime (mod switch), which shrinks the reply by a third.
Leaks (declared): the decryption noise before flooding is at most 2^noise_bits
(``noise_bound_bits``); the flood hides it with statistical distance <= 2^-(FLOOD_BITS -
noise_bits) per coefficient; the server refuses a layer whose margin is below SIGMA_MIN.
"""

from __future__ import annotations

import math
import secrets
import struct
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sa

from he.flood import add_flood, dynarray, framed
from he.keys import HeContextError, from_bytes, to_bytes
from he.params import HeParamError, check_modulus_bits

T_BITS = 48
LIFT = 64 - T_BITS
FLOOD_BITS = 124          # Delta = q / t ~ 2^132; flood + noise stay far below Delta / 2
FRESH_NOISE_BITS = 20     # bound on a fresh public-key encryption's noise (measured ~2^7)
SIGMA_MIN = 64            # required statistical margin per coefficient


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if n < 2:
        return False
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@dataclass(frozen=True)
class BfvParams:
    name: str
    poly_modulus_degree: int
    data_primes: tuple[int, ...]
    special_prime: int
    t_bits: int = T_BITS

    @property
    def t(self) -> int:
        return 1 << self.t_bits

    @property
    def bit_sizes(self) -> tuple[int, ...]:
        return tuple(p.bit_length() for p in self.data_primes + (self.special_prime,))

    @property
    def delta_bits(self) -> int:
        return sum(p.bit_length() for p in self.data_primes) - 1 - self.t_bits

    def check(self) -> "BfvParams":
        """Security table, primality, NTT-friendliness and q = 1 mod t, by name."""
        check_modulus_bits(self.name, self.poly_modulus_degree, self.bit_sizes)
        two_n = 2 * self.poly_modulus_degree
        for p in self.data_primes + (self.special_prime,):
            if not _is_prime(p) or p % two_n != 1:
                raise HeParamError(f"parameter set {self.name!r}: {p} is not a prime = 1 mod 2N")
        if math.prod(self.data_primes) % self.t != 1:
            raise HeParamError(f"parameter set {self.name!r}: q must be 1 mod t = 2^{self.t_bits}")
        if FLOOD_BITS + 2 > self.delta_bits:
            raise HeParamError(f"parameter set {self.name!r}: Delta = 2^{self.delta_bits} leaves "
                               f"no room for a 2^{FLOOD_BITS} flood")
        return self


BFV_SETS = {ps.name: ps.check() for ps in (
    BfvParams("bfv-n8192-t48", 8192,
              (1139410705724735489, 1146166105165791233, 1147010530095923201), 1073692673),
)}


def get_bfv_params(name: str) -> BfvParams:
    try:
        return BFV_SETS[name]
    except KeyError:
        raise HeParamError(f"unknown BFV parameter set {name!r}; known: {sorted(BFV_SETS)}") from None


def bfv_context(ps: BfvParams):
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(ps.poly_modulus_degree)
    parms.set_coeff_modulus([sa.Modulus(p) for p in ps.data_primes + (ps.special_prime,)])
    parms.set_plain_modulus(sa.Modulus(ps.t))
    ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise HeContextError(f"SEAL refused parameter set {ps.name!r}: "
                             f"{ctx.parameters_error_message()}")
    return ctx


def plaintext(context, coeffs: np.ndarray):
    """A BFV plaintext with the given coefficients (integers in [0, t))."""
    n = context.first_context_data().parms().poly_modulus_degree()
    body = struct.pack("<4QQd", 0, 0, 0, 0, n, 1.0)
    full = np.zeros(n, dtype=np.uint64)
    full[:len(coeffs)] = coeffs
    return from_bytes(sa.Plaintext, context, framed(body + dynarray(full)), "plaintext")


@dataclass
class BfvClientKeys:
    params: BfvParams
    context: object
    secret_key: object
    public_key: object

    @classmethod
    def generate(cls, params: BfvParams) -> "BfvClientKeys":
        ctx = bfv_context(params)
        keygen = sa.KeyGenerator(ctx)
        pk = sa.PublicKey()
        keygen.create_public_key(pk)
        return cls(params, ctx, keygen.secret_key(), pk)

    def public_bundle(self) -> dict:
        return {"params": self.params.name, "public_key": to_bytes(self.public_key)}

    def encrypt(self, coeffs: np.ndarray):
        ct = sa.Ciphertext()
        sa.Encryptor(self.context, self.public_key).encrypt(plaintext(self.context, coeffs), ct)
        return ct

    def decrypt(self, ct, positions: np.ndarray) -> np.ndarray:
        """The plaintext coefficients at ``positions`` (integers in [0, t))."""
        pt = sa.Plaintext()
        sa.Decryptor(self.context, self.secret_key).decrypt(ct, pt)
        count = pt.coeff_count()
        return np.fromiter((pt.data(int(i)) if i < count else 0 for i in positions),
                           dtype=np.uint64, count=len(positions))

    def noise_budget(self, ct) -> int:
        return sa.Decryptor(self.context, self.secret_key).invariant_noise_budget(ct)


@dataclass
class BfvServerKeys:
    """The server's side: the public key only."""

    params: BfvParams
    context: object
    public_key: object

    @classmethod
    def from_bundle(cls, bundle: dict, allowed: tuple[str, ...]) -> "BfvServerKeys":
        name = bundle.get("params")
        if name not in allowed:
            raise HeContextError(f"parameter set {name!r} is not allowed here; allowed: "
                                 f"{list(allowed)}")
        extra = sorted(set(bundle) - {"params", "public_key"})
        if extra:
            raise HeContextError(f"public bundle carries unexpected fields {extra}")
        ps = get_bfv_params(name)
        ctx = bfv_context(ps)
        return cls(ps, ctx, from_bytes(sa.PublicKey, ctx, bundle["public_key"], "public key"))

    def finish_for_client(self, ct, mask: np.ndarray, flood_bits: int = FLOOD_BITS,
                          switch: bool = True):
        """Mask every coefficient (``mask``: N integers in [0, t)), re-randomise, flood,
        drop a prime. ``flood_bits=0, switch=False`` (tests of the attack only) leaves the
        weight-dependent noise in place."""
        ev = sa.Evaluator(self.context)
        out = sa.Ciphertext()
        ev.add_plain(ct, plaintext(self.context, mask), out)
        zero = sa.Ciphertext()
        sa.Encryptor(self.context, self.public_key).encrypt_zero(out.parms_id(), zero)
        ev.add_inplace(out, zero)
        if flood_bits:
            add_flood(self.context, out, flood_bits)
        if switch:
            ev.mod_switch_to_next_inplace(out)
        return out

    def uniform_mask(self) -> np.ndarray:
        n = self.params.poly_modulus_degree
        raw = np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8")
        return raw & np.uint64(self.params.t - 1)


def noise_bound_bits(max_abs_weight: int, terms: int) -> int:
    """Bound on a product's noise: ``terms`` weight coefficients (at most ``max_abs_weight``)
    meet each output coefficient, each times (fresh noise + 1)."""
    return math.ceil(math.log2(max(1, max_abs_weight) * max(1, terms))) + FRESH_NOISE_BITS + 1


def check_margin(noise_bits: int, what: str) -> int:
    """The statistical parameter per coefficient; refuse below SIGMA_MIN."""
    sigma = FLOOD_BITS - noise_bits
    if sigma < SIGMA_MIN:
        raise HeParamError(f"{what}: noise bound 2^{noise_bits} leaves a flood margin of "
                           f"{sigma} bits, below the required {SIGMA_MIN}")
    return sigma
