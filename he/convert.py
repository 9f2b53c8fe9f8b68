"""Conversions between CKKS ciphertexts and additive shares in our fixed-point ring.

CKKS -> shares (the server holds Enc(y), the client the secret key):
  1. the server draws r uniform in [-2^(f + MASK_BITS), 2^(f + MASK_BITS)) (ring units,
     so t = r / 2^f is a multiple of one ulp) and an imaginary part of the same width;
  2. it adds the complex mask t + i t' at the ciphertext's level and scale, re-randomises
     with a fresh encryption of zero (public key), and floods the low bits: E uniform in
     +-2^low_flood_bits in every coefficient (``he.flood``). The mask's coefficients are
     about 2^(32+40) wide but float64 encoding leaves their lowest ~2^20 empty, where the
     weight-dependent noise (2^13 to 2^17) would show; E fills exactly that gap, so the
     decryption holds y + t in the real parts and t' in the imaginary parts of the slots
     with no trace of how y was computed (estimated statistical distance per coefficient
     about 2^17 / 2^72, from the mask's width);
  3. the client decrypts and rounds (y + t) 2^f to its share; the server's share is -r.
Communication: one ciphertext to the client. The sum is round(y 2^f) up to the flood's
error: E spreads over the slots as about 2^low_flood_bits sqrt(N) / scale, at most
CONVERSION_ERROR = 3e-4 (about 20 ulps at f = 16) per element.
Leaks (statistical, declared): the client sees y + t with t uniform over 2^(MASK_BITS+1)
value units, so for |y| <= 2^Y_BITS the statistical distance between two values of y is
at most 2^(Y_BITS - MASK_BITS) per element: SIGMA = MASK_BITS - Y_BITS = 26 bits with
MASK_BITS = 32, Y_BITS = 6. It adds up linearly over the elements an inference converts
(2^-26 each). The mask cannot be much wider: float64 decoding loses a bit per bit of
magnitude, past about 2^34 value units the decode error exceeds one ulp at f = 16, and the
low-bit flood below grows with the mask (2^34 costs 4x the error of 2^32: 6e-4 against
1.5e-4 at most per element, measured).

shares -> CKKS (the reverse, needed by ``he`` after a 2PC step), x = x_c + x_s:
  1. the server draws the same kind of mask r and sends x_s + r (ring) to the client;
  2. the client adds its share, decodes x + t (|x + t| < 2^35) and encrypts it;
  3. the server subtracts t under encryption (one add_plain).
Communication: one ring vector to the client, one ciphertext back. Leaks: the client sees
x + t: the same SIGMA per element.
"""

from __future__ import annotations

import secrets

import numpy as np
import tenseal.sealapi as sa
import torch

from he.flood import add_flood

MASK_BITS = 32          # |t| < 2^32 value units
Y_BITS = 6              # values converted must satisfy |y| <= 2^6
SIGMA = MASK_BITS - Y_BITS
FLOAT_BITS = 52         # float64 mantissa: the encoder's resolution below the mask
CONVERSION_ERROR = 3e-4  # |error| per CKKS -> shares element (the flood's spread, 3.6e-5
                         # standard deviation at N = 8192, scale 2^40, is 8 sigma below it)


def low_flood_bits(scale_bits: int) -> int:
    """Width of the low-bit flood: the gap the encoder leaves, |mask| * scale * 2^-52."""
    return MASK_BITS + scale_bits - FLOAT_BITS


def _uniform(n: int, bits: int) -> np.ndarray:
    """Uniform integers in [-2^bits, 2^bits) from a cryptographic source."""
    raw = np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8") >> np.uint64(63 - bits)
    return raw.astype(np.int64) - (1 << bits)


def mask_ring(n: int, frac_bits: int) -> np.ndarray:
    """Server: r (ring units) with |r| < 2^(f + MASK_BITS)."""
    return _uniform(n, frac_bits + MASK_BITS)


def ckks_to_shares_server(server, ct, n, frac_bits: int):
    """Mask, re-randomise; returns (ciphertext for the client, the server's share -r of
    the slots ``n``: a count (the first n slots) or an array of slot positions)."""
    slots = server.params.slots
    pos = np.arange(n) if np.isscalar(n) else np.asarray(n)
    everything = _uniform(slots, frac_bits + MASK_BITS)
    r = everything[pos]
    imag = _uniform(slots, frac_bits + MASK_BITS).astype(np.float64) / 2 ** frac_bits
    real = everything.astype(np.float64) / 2 ** frac_bits
    pt = sa.Plaintext()
    sa.CKKSEncoder(server.context).encode((real + 1j * imag).tolist(), ct.parms_id(),
                                          ct.scale, pt)
    out = sa.Ciphertext()
    ev = sa.Evaluator(server.context)
    ev.add_plain(ct, pt, out)
    zero = sa.Ciphertext()
    sa.Encryptor(server.context, server.public_key).encrypt_zero(ct.parms_id(), zero)
    zero.scale = ct.scale
    ev.add_inplace(out, zero)
    add_flood(server.context, out, low_flood_bits(server.params.scale_bits))
    return out, torch.from_numpy(-r)


def ckks_to_shares_client(keys, ct, n, frac_bits: int) -> torch.Tensor:
    pt = sa.Plaintext()
    sa.Decryptor(keys.context, keys.secret_key).decrypt(ct, pt)
    pos = np.arange(n) if np.isscalar(n) else np.asarray(n)
    z = np.asarray(sa.CKKSEncoder(keys.context).decode_double(pt))[pos]
    return torch.from_numpy(np.round(z * 2 ** frac_bits).astype(np.int64))


def shares_to_ckks_server_mask(x_server: torch.Tensor, frac_bits: int):
    """Server: (x_s + r to send, r kept)."""
    r = torch.from_numpy(mask_ring(x_server.numel(), frac_bits)).reshape(x_server.shape)
    return x_server + r, r


def shares_to_ckks_client(keys, x_client: torch.Tensor, masked: torch.Tensor, frac_bits: int,
                          encode):
    """Client: decode x + t from its share and the server's masked share, encrypt it with
    ``encode`` (the slot layout the next product needs: a callable on a float array)."""
    z = (x_client + masked).to(torch.float64) / 2 ** frac_bits
    if float(z.abs().max()) >= 2 ** (MASK_BITS + 1):
        raise ValueError("masked value outside the decodable range: |x| exceeds 2^6")
    return encode(z.numpy())


def shares_to_ckks_server_unmask(server, ct, r: torch.Tensor, frac_bits: int, layout):
    """Server: Enc(x + t) - t; ``layout`` places the mask the way the client's encoding
    placed its values (a callable on a float array giving the slot vector)."""
    pt = sa.Plaintext()
    t = layout(r.to(torch.float64).numpy() / 2 ** frac_bits)
    sa.CKKSEncoder(server.context).encode(list(t), ct.parms_id(), ct.scale, pt)
    out = sa.Ciphertext()
    sa.Evaluator(server.context).sub_plain(ct, pt, out)
    return out
