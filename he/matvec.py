"""Matrix-vector products under CKKS with the server's plaintext weights: baby-step
giant-step diagonals through ``tenseal.sealapi``.

For W (m, n), pad to d = max(m, n) and write W's generalised diagonals
diag_k[i] = W[i, (i + k) mod d]. With k = g b + j (baby steps j < b, giant steps g):

  y = sum_g rot( sum_j D_{g,j} * rot(x, j), g b ),  D_{g,j}[s] = diag_{gb+j}[(s - gb) mod d]

where rot(v, t)[s] = v[s + t]. The client encrypts x replicated over 2d + b slots (so
every rotation reads valid entries; several tokens pack side by side, one such block each,
and share every rotation and product), the server does b - 1 baby rotations of the input,
d plaintext products, ceil(d / b) - 1 giant rotations and one rescale: depth 1.
Rows i < m of the result's slots hold y = W x. The diagonals are encoded once per weight
matrix (offline), at the ciphertext's level and scale.
Leaks: nothing to the server (it sees ciphertexts); the decryption holds W x in slots
< m and partial sums elsewhere, so a returned ciphertext must be masked and flooded
before the client decrypts it (circuit privacy; not done by this module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sa

from he.params import ParamSet, check_depth


def padded_dim(m: int, n: int) -> int:
    return max(m, n)


def default_baby(d: int) -> int:
    return max(1, int(2 ** round(math.log2(math.sqrt(d)))))


def rotation_steps(d: int, b: int) -> list[int]:
    """Galois steps the product needs: 1..b-1 and the multiples of b below d."""
    return sorted(set(range(1, b)) | {g * b for g in range(1, math.ceil(d / b))})


def block(d: int, b: int) -> int:
    """Slots one token occupies: x repeated over 2d + b slots."""
    return 2 * d + b


def max_tokens(d: int, b: int, slots: int) -> int:
    return slots // block(d, b)


def replicate(x: np.ndarray, d: int, b: int, slots: int) -> np.ndarray:
    """The client's slot vector: each token's x (rows of a 2-d x) zero-padded to d and
    repeated over its own block of 2d + b slots; blocks side by side."""
    xs = np.atleast_2d(np.asarray(x, dtype=np.float64))
    need = block(d, b) * len(xs)
    if need > slots:
        raise ValueError(f"{len(xs)} token(s) of a {d}-wide product need {need} slots; the "
                         f"parameter set has {slots}")
    out = np.zeros(need)
    for t, row in enumerate(xs):
        xp = np.zeros(d)
        xp[:len(row)] = row
        out[t * block(d, b):(t + 1) * block(d, b)] = np.resize(xp, block(d, b))
    return out


@dataclass
class EncodedMatrix:
    """W's shifted diagonals, encoded (server side, offline)."""

    m: int
    n: int
    d: int
    b: int
    plains: list          # plains[g][j]: a sealapi Plaintext, or None for an all-zero one
    tokens: int = 1       # tokens packed side by side in one ciphertext

    @classmethod
    def encode(cls, w: np.ndarray, ps: ParamSet, context, b: int | None = None,
               tokens: int = 1) -> "EncodedMatrix":
        check_depth(ps, 1, "a plaintext matrix-vector product")
        m, n = w.shape
        d = padded_dim(m, n)
        b = b or default_baby(d)
        if tokens > max_tokens(d, b, ps.slots):
            raise ValueError(f"{tokens} tokens of a {d}-wide product do not fit {ps.slots} slots")
        wp = np.zeros((d, d))
        wp[:m, :n] = w
        encoder = sa.CKKSEncoder(context)
        parms = context.first_parms_id()
        rows = np.arange(d)
        plains = []
        for g in range(math.ceil(d / b)):
            row = []
            for j in range(b):
                k = g * b + j
                if k >= d:
                    break
                diag = wp[rows, (rows + k) % d]
                if not diag.any():
                    row.append(None)
                    continue
                shifted = np.zeros(ps.slots)
                s = np.arange(g * b, g * b + d)
                for t in range(tokens):
                    shifted[t * block(d, b) + s] = diag[(s - g * b) % d]
                pt = sa.Plaintext()
                encoder.encode(shifted.tolist(), parms, ps.scale, pt)
                row.append(pt)
            plains.append(row)
        return cls(m, n, d, b, plains, tokens)


def encrypt_vector(keys, x: np.ndarray, d: int, b: int):
    """Client: encrypt x (replicated for a d-wide product with b baby steps); a 2-d x
    packs one token per row."""
    encoder = sa.CKKSEncoder(keys.context)
    pt = sa.Plaintext()
    encoder.encode(replicate(x, d, b, keys.params.slots).tolist(), keys.params.scale, pt)
    ct = sa.Ciphertext()
    sa.Encryptor(keys.context, keys.public_key).encrypt(pt, ct)
    return ct


def decrypt_vector(keys, ct, m: int, d: int | None = None, b: int | None = None,
                   tokens: int = 1) -> np.ndarray:
    """The first m slots (one token), or (tokens, m) for packed tokens (give d and b)."""
    pt = sa.Plaintext()
    sa.Decryptor(keys.context, keys.secret_key).decrypt(ct, pt)
    v = np.asarray(sa.CKKSEncoder(keys.context).decode_double(pt))
    if tokens == 1 and d is None:
        return v[:m]
    return np.stack([v[t * block(d, b):t * block(d, b) + m] for t in range(tokens)])


def matvec(server, ct, mat: EncodedMatrix):
    """Server: Enc(W x) from Enc(x) (BSGS, one rescale)."""
    ev = sa.Evaluator(server.context)
    gk = server.galois_keys
    baby = [ct]
    for j in range(1, mat.b):
        r = sa.Ciphertext()
        ev.rotate_vector(ct, j, gk, r)
        baby.append(r)
    total = None
    for g, row in enumerate(mat.plains):
        inner = None
        for j, pt in enumerate(row):
            if pt is None:
                continue
            prod = sa.Ciphertext()
            ev.multiply_plain(baby[j], pt, prod)
            if inner is None:
                inner = prod
            else:
                ev.add_inplace(inner, prod)
        if inner is None:
            continue
        if g:
            ev.rotate_vector_inplace(inner, g * mat.b, gk)
        if total is None:
            total = inner
        else:
            ev.add_inplace(total, inner)
    ev.rescale_to_next_inplace(total)
    return total
