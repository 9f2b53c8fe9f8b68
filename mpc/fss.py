"""Distributed comparison functions (DCF), vectorised: function secret sharing of
f_{alpha,beta}(y) = beta if y < alpha else 0, for y, alpha in [0, 2^n), beta in Z_2^64^p.

Construction: the optimised DCF of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee
(ePrint 2020/1392, fig. 1). A key is a root seed plus, per level, a seed correction word
(16 bytes), p payload correction words (8 bytes each) and two control bits, plus a final
payload correction; the correction words are common to both keys. Evaluation walks the n
levels once: ``Eval_0(y) + Eval_1(y) = f(y)`` in Z_2^64.

PRG: fixed-key AES-128 in the Matyas-Meyer-Oseas form G(s)_j = AES_K(s xor c_j) xor s xor
c_j with a distinct public constant c_j per output block (plain AES_K(s) would be
invertible under the public key and give the seeds away). One ECB call covers every seed
of a level, so a level of 10^5 keys costs one AES pass over a few MB.

Sizes per key: n * (17 + 8p) + 8p bytes of correction words (shared by both keys) plus a
16-byte root seed (expanded from the party's PRG seed, so it never travels).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpc import native_dcf

_KEY = bytes.fromhex("a3f1c2d4e5b60718293a4b5c6d7e8f90")   # public, fixed
_ECB = Cipher(algorithms.AES(_KEY), modes.ECB())
MAX_PAYLOAD = 2
CHUNK = 8192   # keys per pass: keeps each level's arrays in cache


def _constants(m: int) -> np.ndarray:
    c = np.zeros((m, 2), dtype=np.uint64)
    c[:, 0] = np.arange(1, m + 1, dtype=np.uint64)
    c[:, 1] = np.uint64(0x5A5A5A5A5A5A5A5A)
    return c


_C = _constants(2 + MAX_PAYLOAD)
_LOW = np.uint64(1)
_CLEAR = np.uint64(0xFFFFFFFFFFFFFFFE)


def prg(seeds: np.ndarray, p: int):
    """G(s): (sL, tL, sR, tR, vL, vR) for seeds (N, 2) uint64 (128 bits each); t* are
    (N,) uint64 bits, v* (N, p) uint64. Blocks are laid out block-major so that every
    output is a contiguous array."""
    blocks = 2 + p
    x = np.empty((blocks, len(seeds), 2), dtype=np.uint64)
    np.bitwise_xor(seeds[None, :, :], _C[:blocks, None, :], out=x)
    buf = bytearray(x.nbytes + 16)
    if x.size:                                  # (a zero-size view cannot be cast)
        _ECB.encryptor().update_into(memoryview(x).cast("B"), buf)
    out = np.frombuffer(buf, dtype=np.uint64, count=x.size).reshape(x.shape)
    out ^= x
    sL, sR = out[0], out[1]
    tL, tR = sL[:, 0] & _LOW, sR[:, 0] & _LOW
    sL[:, 0] &= _CLEAR
    sR[:, 0] &= _CLEAR
    if p == 1:
        return sL, tL, sR, tR, out[2][:, :1], out[2][:, 1:]
    return sL, tL, sR, tR, out[2], out[3]


def _convert(seeds: np.ndarray, p: int) -> np.ndarray:
    return seeds[:, :p]


def _pick(bit: np.ndarray, right, left):
    """Row-wise select: right where bit == 1."""
    shape = (-1,) + (1,) * (left.ndim - 1)
    return np.where(bit.reshape(shape).astype(bool), right, left)


def _mask(t: np.ndarray) -> np.ndarray:
    """All-ones where t == 1, as a column (for t * x by bitwise and)."""
    return (np.uint64(0) - t)[:, None]


def _sign(t: np.ndarray) -> np.ndarray:
    """(-1)^t in Z_2^64, as a column."""
    return (np.uint64(1) - np.uint64(2) * t)[:, None]


def seeds_from_bytes(raw: np.ndarray) -> np.ndarray:
    """(N, 16) uint8 or (N, 2) int64/uint64 to (N, 2) uint64 seeds."""
    return np.ascontiguousarray(raw).view(np.uint64).reshape(-1, 2)


def gen(alpha: np.ndarray, beta: np.ndarray, n: int, s0: np.ndarray, s1: np.ndarray) -> dict:
    """Correction words for N keys. alpha (N,) uint64 < 2^n; beta (N, p) uint64; root
    seeds s0, s1 (N, 2) uint64 (each party's own, from its PRG seed). Runs the AES-NI
    kernel when it loaded (mpc/native_dcf.py), else numpy; both give the same bits."""
    _check(beta.shape[1], n)
    lib = native_dcf.library()
    if lib is not None:
        return native_dcf._gen(lib, alpha, beta, n, s0, s1)
    if len(alpha) <= CHUNK:
        return _gen(alpha, beta, n, s0, s1)
    parts = [_gen(alpha[a:a + CHUNK], beta[a:a + CHUNK], n, s0[a:a + CHUNK], s1[a:a + CHUNK])
             for a in range(0, len(alpha), CHUNK)]
    return {"s_cw": np.concatenate([q["s_cw"] for q in parts], axis=1),
            "v_cw": np.concatenate([q["v_cw"] for q in parts], axis=1),
            "t_cw": np.concatenate([q["t_cw"] for q in parts], axis=1),
            "final": np.concatenate([q["final"] for q in parts])}


def _check(p: int, n: int) -> None:
    if not 1 <= p <= MAX_PAYLOAD:
        raise ValueError(f"payload of {p} words; at most {MAX_PAYLOAD}")
    if not 1 <= n <= 64:
        raise ValueError(f"input bits {n} outside [1, 64]")


def _gen(alpha: np.ndarray, beta: np.ndarray, n: int, s0: np.ndarray, s1: np.ndarray) -> dict:
    """The numpy reference of ``gen``."""
    N, p = beta.shape
    _check(p, n)
    s = [s0.copy(), s1.copy()]
    t = [np.zeros(N, np.uint64), np.ones(N, np.uint64)]
    v_alpha = np.zeros((N, p), np.uint64)
    s_cw = np.empty((n, N, 2), np.uint64)
    v_cw = np.empty((n, N, p), np.uint64)
    t_cw = np.empty((n, N), np.uint8)            # bit 0: left, bit 1: right
    with np.errstate(over="ignore"):
        for i in range(n):
            bit = (alpha >> np.uint64(n - 1 - i)) & _LOW
            g = [prg(s[0], p), prg(s[1], p)]
            # keep = the side alpha's bit goes to; lose = the other side
            s_lose = [_pick(bit, g[b][0], g[b][2]) for b in (0, 1)]
            s_keep = [_pick(bit, g[b][2], g[b][0]) for b in (0, 1)]
            v_lose = [_pick(bit, g[b][4], g[b][5]) for b in (0, 1)]
            v_keep = [_pick(bit, g[b][5], g[b][4]) for b in (0, 1)]
            sign = _sign(t[1])
            scw = s_lose[0] ^ s_lose[1]
            vcw = sign * (v_lose[1] - v_lose[0] - v_alpha)
            vcw = vcw + (_mask(bit) & (sign * beta))   # lose = L when bit = 1
            v_alpha = v_alpha - v_keep[1] + v_keep[0] + sign * vcw
            tl = g[0][1] ^ g[1][1] ^ bit ^ _LOW
            tr = g[0][3] ^ g[1][3] ^ bit
            t_keep_cw = np.where(bit == 1, tr, tl)
            for b in (0, 1):
                s[b] = s_keep[b] ^ (_mask(t[b]) & scw)
                t[b] = np.where(bit == 1, g[b][3], g[b][1]) ^ (t[b] & t_keep_cw)
            s_cw[i], v_cw[i], t_cw[i] = scw, vcw, (tl | (tr << _LOW)).astype(np.uint8)
        final = _sign(t[1]) * (_convert(s[1], p) - _convert(s[0], p) - v_alpha)
    return {"s_cw": s_cw, "v_cw": v_cw, "t_cw": t_cw, "final": final}


def eval_(party: int, root: np.ndarray, cw: dict, y: np.ndarray, n: int) -> np.ndarray:
    """Party ``party``'s shares (N, p) uint64 of f(y) for y (N,) uint64 < 2^n (the AES-NI
    kernel when it loaded, else numpy)."""
    lib = native_dcf.library()
    if lib is not None:
        return native_dcf._eval(lib, party, root, cw, y, n)
    if len(y) <= CHUNK:
        return _eval(party, root, cw, y, n)
    parts = []
    for a in range(0, len(y), CHUNK):
        sl = slice(a, a + CHUNK)
        part = {"s_cw": cw["s_cw"][:, sl], "v_cw": cw["v_cw"][:, sl], "t_cw": cw["t_cw"][:, sl],
                "final": cw["final"][sl]}
        parts.append(_eval(party, root[sl], part, y[sl], n))
    return np.concatenate(parts)


def _eval(party: int, root: np.ndarray, cw: dict, y: np.ndarray, n: int) -> np.ndarray:
    """The numpy reference of ``eval_``."""
    p = cw["final"].shape[1]
    s = root
    t = np.full(len(y), party, np.uint64)
    v = np.zeros((len(y), p), np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            bit = (y >> np.uint64(n - 1 - i)) & _LOW
            sL, tL, sR, tR, vL, vR = prg(s, p)
            m = _mask(t)
            tcw = cw["t_cw"][i].astype(np.uint64)
            right = bit.astype(bool)
            # the child we descend to, corrected where t = 1
            s = np.where(right[:, None], sR, sL) ^ (m & cw["s_cw"][i])
            t_next = np.where(right, tR ^ (t & (tcw >> _LOW)), tL ^ (t & tcw & _LOW))
            v = v + np.where(right[:, None], vR, vL) + (m & cw["v_cw"][i])
            t = t_next
        v = v + _convert(s, p) + (_mask(t) & cw["final"])
    return v if party == 0 else np.uint64(0) - v


def key_bytes(n: int, p: int) -> int:
    """Correction-word bytes per key (what each party stores and receives)."""
    return n * (16 + 8 * p + 1) + 8 * p
