"""Y = X W^T modulo t under BFV with coefficient packing (no slots, no rotations).

X is (T, n): T token rows; W is (m, n). Split tokens into blocks of t_b, inputs into
blocks of n_b and outputs into blocks of m_b with t_b m_b n_b <= N. Then

  A[tau, nu] = sum_{t < t_b, j < n_b} X[tau t_b + t, nu n_b + j] x^(t m_b n_b + j)
  B[mu, nu]  = sum_{i < m_b, j < n_b} W[mu m_b + i, nu n_b + j] x^(i n_b + n_b - 1 - j)
  C[tau, mu] = sum_nu A[tau, nu] B[mu, nu]

and coefficient t m_b n_b + i n_b + n_b - 1 of C[tau, mu] is Y[tau t_b + t, mu m_b + i]:
the only pairs of terms that land there are the ones with equal j, and wrapped terms
(exponents >= N, negated) land below n_b - 1, where no output sits. Other coefficients
hold partial sums, so the whole polynomial is masked before it is returned (``he.bfv``).
Cost: ceil(T/t_b) ceil(n/n_b) ciphertexts in, ceil(T/t_b) ceil(m/m_b) out, one
plaintext product per (tau, mu, nu) in NTT form; the block sizes are chosen to minimise
the bytes moved (a reply has two primes, an input three).
Leaks: nothing to the server (ciphertexts); see ``he.bfv`` for what a reply may reveal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sa

from he.bfv import plaintext


@dataclass(frozen=True)
class Geometry:
    tokens: int
    n: int
    m: int
    t_b: int
    n_b: int
    m_b: int

    @property
    def token_blocks(self) -> int:
        return math.ceil(self.tokens / self.t_b)

    @property
    def in_blocks(self) -> int:
        return math.ceil(self.n / self.n_b)

    @property
    def out_blocks(self) -> int:
        return math.ceil(self.m / self.m_b)

    @property
    def inputs(self) -> int:
        return self.token_blocks * self.in_blocks

    @property
    def outputs(self) -> int:
        return self.token_blocks * self.out_blocks

    @property
    def products(self) -> int:
        return self.token_blocks * self.in_blocks * self.out_blocks

    def output_positions(self) -> np.ndarray:
        """(t_b, m_b) coefficient positions of the outputs in a reply."""
        t = np.arange(self.t_b)[:, None]
        i = np.arange(self.m_b)[None, :]
        return t * self.m_b * self.n_b + i * self.n_b + self.n_b - 1


def choose_geometry(tokens: int, n: int, m: int, degree: int) -> Geometry:
    """Block sizes with t_b m_b n_b <= N that move the fewest ciphertext bytes
    (3 units per input, 2 per reply), then need the fewest products."""
    best = None
    for n_b in range(1, min(n, degree) + 1):
        for t_b in range(1, min(tokens, degree // n_b) + 1):
            m_b = min(m, degree // (t_b * n_b))
            g = Geometry(tokens, n, m, t_b, n_b, m_b)
            key = (3 * g.inputs + 2 * g.outputs, g.products)
            if best is None or key < best[0]:
                best = (key, g)
    return best[1]


def input_polys(geom: Geometry, x: np.ndarray) -> list[np.ndarray]:
    """Coefficient vectors of A[tau, nu], in (tau, nu) order; ``x`` (T, n) uint64 mod t."""
    out = []
    span = geom.m_b * geom.n_b
    for tau in range(geom.token_blocks):
        rows = x[tau * geom.t_b:(tau + 1) * geom.t_b]
        for nu in range(geom.in_blocks):
            block = rows[:, nu * geom.n_b:(nu + 1) * geom.n_b]
            coeffs = np.zeros((geom.t_b - 1) * span + geom.n_b, dtype=np.uint64)
            idx = np.arange(block.shape[0])[:, None] * span + np.arange(block.shape[1])[None, :]
            coeffs[idx] = block
            out.append(coeffs)
    return out


class EncodedWeights:
    """B[mu, nu] as plaintexts in NTT form (server side). Kept for every inference when
    they fit ``cache_bytes`` (the digits models); otherwise made when used (about 0.3 ms
    each), so that a large model's server does not hold gigabytes of sparse plaintexts."""

    def __init__(self, geom: Geometry, w_mod_t: np.ndarray, context, cache_bytes=256 << 20):
        self.geom = geom
        self.w = w_mod_t
        self.context = context
        data = context.first_context_data().parms()
        per_plain = 8 * data.poly_modulus_degree() * (len(data.coeff_modulus()) - 1)
        self.cached = geom.in_blocks * geom.out_blocks * per_plain <= cache_bytes
        self.plains: dict[tuple[int, int], object] = {}
        if self.cached:
            for mu in range(geom.out_blocks):
                for nu in range(geom.in_blocks):
                    pt = self._make(mu, nu)
                    if pt is not None:
                        self.plains[(mu, nu)] = pt

    def _make(self, mu, nu):
        g = self.geom
        block = self.w[mu * g.m_b:(mu + 1) * g.m_b, nu * g.n_b:(nu + 1) * g.n_b]
        if not block.any():
            return None
        i = np.arange(block.shape[0])[:, None]
        j = np.arange(block.shape[1])[None, :]
        coeffs = np.zeros(g.m_b * g.n_b, dtype=np.uint64)
        coeffs[i * g.n_b + g.n_b - 1 - j] = block
        pt = sa.Plaintext()
        sa.Evaluator(self.context).transform_to_ntt(plaintext(self.context, coeffs),
                                                    self.context.first_parms_id(), pt)
        return pt

    def get(self, mu, nu):
        return self.plains.get((mu, nu)) if self.cached else self._make(mu, nu)


def multiply(server, cts: list, weights: EncodedWeights) -> list:
    """Server (``he.bfv.BfvServerKeys``): C[tau, mu] for every (tau, mu), in that order,
    in coefficient form."""
    g = weights.geom
    context = server.context
    ev = sa.Evaluator(context)
    ntt = []
    for ct in cts:
        c = sa.Ciphertext()
        ev.transform_to_ntt(ct, c)
        ntt.append(c)
    out = []
    for tau in range(g.token_blocks):
        for mu in range(g.out_blocks):
            acc = None
            for nu in range(g.in_blocks):
                pt = weights.get(mu, nu)
                if pt is None:
                    continue
                prod = sa.Ciphertext()
                ev.multiply_plain(ntt[tau * g.in_blocks + nu], pt, prod)
                if acc is None:
                    acc = prod
                else:
                    ev.add_inplace(acc, prod)
            if acc is None:                 # rows of W that are all zero: a fresh Enc(0)
                acc = sa.Ciphertext()
                sa.Encryptor(context, server.public_key).encrypt_zero(acc)
            else:
                ev.transform_from_ntt_inplace(acc)
            out.append(acc)
    return out


def gather(geom: Geometry, replies: list[np.ndarray]) -> np.ndarray:
    """(T, m) from per-reply output values (each (t_b, m_b), replies in (tau, mu) order)."""
    y = np.zeros((geom.token_blocks * geom.t_b, geom.out_blocks * geom.m_b), dtype=np.uint64)
    k = 0
    for tau in range(geom.token_blocks):
        for mu in range(geom.out_blocks):
            y[tau * geom.t_b:(tau + 1) * geom.t_b, mu * geom.m_b:(mu + 1) * geom.m_b] = replies[k]
            k += 1
    return y[:geom.tokens, :geom.m]
