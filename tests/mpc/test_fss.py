"""mpc.fss: the vectorised distributed comparison function (DCF) and its AES-MMO PRG.

* correctness: Eval_0(y) + Eval_1(y) = beta * [y < alpha] exactly in Z_2^64, for input
  widths n in {1, 2, 7, 32, 63, 64} and payloads of 1 and 2 words, at the edges (alpha,
  alpha +- 1, 0, 2^n - 1) and at random points;
* size: ``key_bytes(n, p)`` is exactly the bytes of the correction words ``gen`` returns per
  key (16 B seed correction, 8p B payload corrections and 1 B of control bits per level,
  8p B final correction);
* a single party's key and outputs look uniform (light statistical checks);
* the PRG is Matyas-Meyer-Oseas, AES_K(s xor c_j) xor s xor c_j, not plain AES_K(s) (which
  the public key would invert), with a distinct constant per output block.

All test data (alpha, beta, root seeds, points) comes from seeded numpy generators.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpc import fss

U = np.uint64
WIDTHS = (1, 2, 7, 32, 63, 64)
KEYS = 300


def _mod_mask(n: int) -> np.uint64:
    return U((1 << n) - 1)


def _uniform(rng: np.random.Generator, shape, n: int = 64) -> np.ndarray:
    """Uniform uint64 values below 2^n (seeded)."""
    x = rng.integers(0, 2 ** 64, size=shape, dtype=np.uint64, endpoint=False)
    return x & _mod_mask(n) if n < 64 else x


def _keys(rng, n: int, p: int, count: int = KEYS, alpha=None):
    alpha = _uniform(rng, (count,), n) if alpha is None else alpha
    beta = _uniform(rng, (count, p))
    s0 = _uniform(rng, (count, 2))
    s1 = _uniform(rng, (count, 2))
    cw = fss.gen(alpha, beta, n, s0, s1)
    return alpha, beta, s0, s1, cw


def _reconstruct(s0, s1, cw, y, n) -> np.ndarray:
    with np.errstate(over="ignore"):
        return fss.eval_(0, s0, cw, y, n) + fss.eval_(1, s1, cw, y, n)


def _expected(alpha, beta, y) -> np.ndarray:
    return np.where((y < alpha)[:, None], beta, U(0))


# -- correctness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("n", WIDTHS)
def test_eval_shares_sum_to_the_comparison(n, p):
    rng = np.random.default_rng(1000 + 10 * n + p)
    alpha, beta, s0, s1, cw = _keys(rng, n, p)
    mask = _mod_mask(n) if n < 64 else U(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        points = {
            "alpha": alpha,
            "alpha-1": (alpha - U(1)) & mask,
            "alpha+1": (alpha + U(1)) & mask,
            "zero": np.zeros_like(alpha),
            "top": np.full_like(alpha, mask),
        }
    for j in range(4):
        points[f"random{j}"] = _uniform(rng, alpha.shape, n)
    for name, y in points.items():
        got = _reconstruct(s0, s1, cw, y, n)
        want = _expected(alpha, beta, y)
        bad = np.nonzero((got != want).any(axis=1))[0]
        assert bad.size == 0, (f"n={n} p={p} at {name}: {bad.size} wrong keys, e.g. "
                               f"alpha={alpha[bad[0]]} y={y[bad[0]]}")


@pytest.mark.parametrize("n", (1, 7, 64))
def test_edge_alphas(n):
    """alpha = 0 (never less), alpha = 1, alpha = 2^n - 1 (everything below the top)."""
    rng = np.random.default_rng(77 + n)
    top = (1 << n) - 1
    alpha = np.array([0, 1, top, top, 0], dtype=np.uint64)
    _, beta, s0, s1, cw = _keys(rng, n, 2, count=len(alpha), alpha=alpha)
    for y in (np.zeros(5, U), np.full(5, top, U), np.array([0, 0, top - 1, top, 1], U)):
        assert np.array_equal(_reconstruct(s0, s1, cw, y, n), _expected(alpha, beta, y))


def test_single_shares_are_not_the_result():
    """Sanity: neither party's output alone equals the function value (it is a share)."""
    rng = np.random.default_rng(5)
    alpha, beta, s0, s1, cw = _keys(rng, 32, 1)
    y = _uniform(rng, alpha.shape, 32)
    want = _expected(alpha, beta, y)
    assert (fss.eval_(0, s0, cw, y, 32) != want).mean() > 0.99
    assert (fss.eval_(1, s1, cw, y, 32) != want).mean() > 0.99


def test_bad_parameters_raise():
    z = np.zeros((1, 2), U)
    with pytest.raises(ValueError):
        fss.gen(np.zeros(1, U), np.zeros((1, 3), U), 8, z, z)
    with pytest.raises(ValueError):
        fss.gen(np.zeros(1, U), np.zeros((1, 1), U), 0, z, z)
    with pytest.raises(ValueError):
        fss.gen(np.zeros(1, U), np.zeros((1, 1), U), 65, z, z)


# -- size ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("n", WIDTHS)
def test_key_bytes_match_the_correction_words(n, p):
    count = 5
    _, _, _, _, cw = _keys(np.random.default_rng(n * 3 + p), n, p, count=count)
    assert set(cw) == {"s_cw", "v_cw", "t_cw", "final"}
    assert cw["s_cw"].shape == (n, count, 2) and cw["s_cw"].dtype == np.uint64
    assert cw["v_cw"].shape == (n, count, p) and cw["v_cw"].dtype == np.uint64
    assert cw["t_cw"].shape == (n, count) and cw["t_cw"].dtype == np.uint8
    assert cw["final"].shape == (count, p) and cw["final"].dtype == np.uint64
    total = sum(a.nbytes for a in cw.values())
    assert total == count * fss.key_bytes(n, p)
    assert fss.key_bytes(n, p) == n * (16 + 8 * p + 1) + 8 * p


def test_key_bytes_64_bit_sign_is_about_1_5_kb():
    # REFERENCES.md: DCF keys for 64-bit inputs are about 1.5 KB per comparison per party
    # (a sign test, one payload word: 63 levels); ReLU's second payload word adds 8 B/level
    assert fss.key_bytes(63, 1) == 1583
    assert fss.key_bytes(63, 2) == 1583 + 63 * 8 + 8


# -- a single key looks random ---------------------------------------------------------------------
def _low_byte_mean(a: np.ndarray) -> float:
    return float((a & U(0xFF)).astype(np.float64).mean())


@pytest.mark.parametrize("n", (7, 32))
def test_party_0_outputs_look_uniform(n):
    """Party 0's output at a fixed y is uniform over keys, whether y < alpha or not, and
    for two different alpha (0 and 2^n - 1) under the same party-0 root seeds."""
    count = 20_000
    rng = np.random.default_rng(900 + n)
    s0 = _uniform(rng, (count, 2))
    y = np.full(count, (1 << (n - 1)), U)
    for alpha in (np.zeros(count, U), np.full(count, (1 << n) - 1, U)):
        beta = np.ones((count, 1), U)
        s1 = _uniform(rng, (count, 2))
        cw = fss.gen(alpha, beta, n, s0, s1)
        out0 = fss.eval_(0, s0, cw, y, n)[:, 0]
        assert abs(_low_byte_mean(out0) - 127.5) < 5
        top_bit = (out0 >> U(63)).astype(np.float64).mean()
        assert abs(top_bit - 0.5) < 0.03
        # the correction words the dealer sends are uniform too
        for name in ("s_cw", "v_cw", "final"):
            assert abs(_low_byte_mean(cw[name]) - 127.5) < 5, name
        tbits = cw["t_cw"]
        assert abs((tbits & 1).mean() - 0.5) < 0.03
        assert abs(((tbits >> 1) & 1).mean() - 0.5) < 0.03


def test_correction_words_differ_for_different_alpha_under_same_seeds():
    """Same root seeds, alpha and alpha' differing in the first bit: the first-level seed
    correction is the xor of the *losing* children, so it changes; both look random."""
    rng = np.random.default_rng(31)
    count, n = 2000, 16
    s0, s1 = _uniform(rng, (count, 2)), _uniform(rng, (count, 2))
    beta = np.ones((count, 1), U)
    a = fss.gen(np.zeros(count, U), beta, n, s0, s1)
    b = fss.gen(np.full(count, 1 << (n - 1), U), beta, n, s0, s1)
    assert (a["s_cw"][0] != b["s_cw"][0]).any(axis=1).all()
    assert abs(_low_byte_mean(a["s_cw"]) - _low_byte_mean(b["s_cw"])) < 5


# -- PRG -----------------------------------------------------------------------------------------
def _aes(blocks: np.ndarray) -> np.ndarray:
    """AES_K over (N, 2) uint64 blocks (same byte layout as fss.prg)."""
    enc = Cipher(algorithms.AES(fss._KEY), modes.ECB()).encryptor()
    data = enc.update(np.ascontiguousarray(blocks).tobytes()) + enc.finalize()
    return np.frombuffer(data, dtype=np.uint64).reshape(blocks.shape).copy()


def test_prg_is_mmo_not_plain_aes():
    rng = np.random.default_rng(2024)
    seeds = _uniform(rng, (500, 2))
    p = 2
    sL, tL, sR, tR, vL, vR = fss.prg(seeds, p)
    consts = fss._C[: 2 + p]
    mmo = [_aes(seeds ^ consts[j][None, :]) ^ seeds ^ consts[j][None, :] for j in range(2 + p)]
    clear = U(0xFFFFFFFFFFFFFFFE)
    # first two blocks: seed (low bit cleared) and control bit = that low bit
    for j, (s, t) in enumerate(((sL, tL), (sR, tR))):
        assert np.array_equal(s[:, 0], mmo[j][:, 0] & clear)
        assert np.array_equal(s[:, 1], mmo[j][:, 1])
        assert np.array_equal(t, mmo[j][:, 0] & U(1))
    # payload words: block 2 and 3, p words each side
    words = np.concatenate([mmo[2], mmo[3]], axis=1)
    assert np.array_equal(vL, words[:, :p]) and np.array_equal(vR, words[:, p:2 * p])
    # and it is not plain AES of the seed, nor AES of seed xor c without the feed-forward
    plain = _aes(seeds)
    assert (sL[:, 1] != plain[:, 1]).all() and (sR[:, 1] != plain[:, 1]).all()
    no_ff = _aes(seeds ^ consts[0][None, :])
    assert (sL[:, 1] != no_ff[:, 1]).all()


def test_prg_constants_distinct_and_blocks_distinct():
    consts = fss._C
    rows = {tuple(int(v) for v in row) for row in consts}
    assert len(rows) == len(consts) == 2 + fss.MAX_PAYLOAD
    rng = np.random.default_rng(7)
    seeds = _uniform(rng, (1000, 2))
    sL, _, sR, _, vL, vR = fss.prg(seeds, 2)
    assert (sL[:, 1] != sR[:, 1]).all()
    assert (vL[:, 0] != vR[:, 0]).all() and (vL[:, 1] != vR[:, 1]).all()
    assert (vL[:, 0] != vL[:, 1]).all()
    # even the zero seed gives distinct, non-trivial blocks
    z = fss.prg(np.zeros((1, 2), U), 2)
    assert z[0][0, 1] != z[2][0, 1] and z[4][0, 0] != z[5][0, 0]


def test_prg_payload_width_one_is_a_prefix():
    """p = 1 uses blocks 0..2; its payload words are the first word of block 2 split L/R."""
    rng = np.random.default_rng(8)
    seeds = _uniform(rng, (100, 2))
    one = fss.prg(seeds, 1)
    two = fss.prg(seeds, 2)
    for a, b in zip(one[:4], two[:4]):
        assert np.array_equal(a, b)
    block2 = _aes(seeds ^ fss._C[2][None, :]) ^ seeds ^ fss._C[2][None, :]
    assert np.array_equal(one[4][:, 0], block2[:, 0]) and np.array_equal(one[5][:, 0], block2[:, 1])
