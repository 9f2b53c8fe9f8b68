"""Matrix-vector products under CKKS with the server's plaintext weights: baby-step
giant-step diagonals through ``tenseal.sealapi``.

For W (m, n), pad to d = max(m, n) and write W's generalised diagonals
diag_k[i] = W[i, (i + k) mod d]. With k = g b + j (baby steps j < b, giant steps g):

  y = sum_g rot( sum_j D_{g,j} * rot(x, j), g b ),  D_{g,j}[s] = diag_{gb+j}[(s - gb) mod d]

where rot(v, t)[s] = v[s + t]. The client encrypts x replicated over 2d + b slots (so
every rotation reads valid entries), the server does b - 1 baby rotations of the input,
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


def replicate(x: np.ndarray, d: int, b: int, slots: int) -> np.ndarray:
    """The client's slot vector: x zero-padded to d, repeated over 2d + b slots."""
    need = 2 * d + b
    if need > slots:
        raise ValueError(f"a {d}-wide product needs {need} slots; the parameter set has {slots}")
    xp = np.zeros(d)
    xp[:len(x)] = x
    return np.resize(xp, need)


@dataclass
class EncodedMatrix:
    """W's shifted diagonals, encoded (server side, offline)."""

    m: int
    n: int
    d: int
    b: int
    plains: list          # plains[g][j]: a sealapi Plaintext, or None for an all-zero one

    @classmethod
    def encode(cls, w: np.ndarray, ps: ParamSet, context, b: int | None = None) -> "EncodedMatrix":
        check_depth(ps, 1, "a plaintext matrix-vector product")
        m, n = w.shape
        d = padded_dim(m, n)
        b = b or default_baby(d)
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
                shifted[s] = diag[(s - g * b) % d]
                pt = sa.Plaintext()
                encoder.encode(shifted.tolist(), parms, ps.scale, pt)
                row.append(pt)
            plains.append(row)
        return cls(m, n, d, b, plains)


def encrypt_vector(keys, x: np.ndarray, d: int, b: int):
    """Client: encrypt x (replicated for a d-wide product with b baby steps)."""
    encoder = sa.CKKSEncoder(keys.context)
    pt = sa.Plaintext()
    encoder.encode(replicate(x, d, b, keys.params.slots).tolist(), keys.params.scale, pt)
    ct = sa.Ciphertext()
    sa.Encryptor(keys.context, keys.public_key).encrypt(pt, ct)
    return ct


def decrypt_vector(keys, ct, m: int) -> np.ndarray:
    pt = sa.Plaintext()
    sa.Decryptor(keys.context, keys.secret_key).decrypt(ct, pt)
    return np.asarray(sa.CKKSEncoder(keys.context).decode_double(pt))[:m]


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
