"""A flood ciphertext (E, 0): E uniform in [-2^bits, 2^bits) in every coefficient, built
through SEAL's serialisation, because ``tenseal.sealapi`` has no call that adds a raw
polynomial to a ciphertext (``add_plain`` adds an encoded message, not noise).

Adding it to a ciphertext adds E to the decryption's noise, uniformly over all N
coefficients (BFV; under CKKS, over the real and imaginary parts of every slot alike).
The ciphertext is in coefficient form: CKKS ciphertexts leave NTT form for the addition
(``add_flood``). Randomness: ``secrets``.
"""

from __future__ import annotations

import secrets
import struct

import numpy as np
import tenseal.sealapi as sa

from he.keys import from_bytes


def _header(size: int) -> bytes:
    return struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 0, 0, size)


def framed(body: bytes) -> bytes:
    """A SEAL 4 object's bytes (compression "none"): a 16-byte header, then the members."""
    return _header(16 + len(body)) + body


def dynarray(values: np.ndarray) -> bytes:
    return framed(struct.pack("<Q", values.size) + values.astype("<u8").tobytes())


def flood_ciphertext(context, parms_id, bits: int, scale: float = 1.0):
    data = context.get_context_data(parms_id)
    primes = [m.value() for m in data.parms().coeff_modulus()]
    n = data.parms().poly_modulus_degree()
    e = [secrets.randbits(bits + 1) - (1 << bits) for _ in range(n)]
    polys = np.zeros((2, len(primes), n), dtype=np.uint64)
    for i, p in enumerate(primes):
        polys[0, i] = np.fromiter((v % p for v in e), dtype=np.uint64, count=n)
    body = (struct.pack("<4Q", *parms_id) + b"\0"
            + struct.pack("<QQQdQ", 2, n, len(primes), scale, 1) + dynarray(polys.reshape(-1)))
    return from_bytes(sa.Ciphertext, context, framed(body), "flood")


def add_flood(context, ct, bits: int) -> None:
    """ct += (E, 0) in place, for a ciphertext in coefficient (BFV) or NTT (CKKS) form."""
    ev = sa.Evaluator(context)
    flood = flood_ciphertext(context, ct.parms_id(), bits, ct.scale)
    if ct.is_ntt_form():
        ev.transform_from_ntt_inplace(ct)
        ev.add_inplace(ct, flood)
        ev.transform_to_ntt_inplace(ct)
    else:
        ev.add_inplace(ct, flood)
