"""Sign test by bit decomposition with binary (AND) triples: the baseline method.

The shares x = x0 + x1 are themselves a binary sharing of two addends (party 0 holds the
bits of x0, party 1 those of x1), so MSB_n(x) = x0[n-1] XOR x1[n-1] XOR carry into bit n-1.
The carry comes from a Kogge-Stone prefix adder on 64-bit words:
  1. G = x0 AND x1 (one AND), P = x0 XOR x1 (local);
  2. for j = 1, 2, 4, ... (ceil(log2(n - 1)) levels): G = G XOR (P AND G << j),
     P = P AND P << j (two ANDs per level, one round; the last level needs only G);
  3. the bit s = P0[n-1] XOR G[n-2] is XOR-shared; converted to arithmetic shares with a
     dealer bit rho shared both ways: open t = s XOR rho, [s] = t + (1 - 2t)[rho].
Each AND of XOR-shared words opens d = u ^ A and e = v ^ B (Beaver, binary).
Communication: 1 + L rounds for the adder (L = ceil(log2(n - 1))) plus 1 for the
conversion; each party sends 16 bytes per AND word (2L words per element) plus 1 byte.
Leaks: nothing: every opened word is masked by fresh dealer randomness.
"""

from __future__ import annotations

import math

import torch

from mpc import prg

LABEL_A, LABEL_B, LABEL_C, LABEL_RB, LABEL_RA = 21, 22, 23, 24, 25


def params(need) -> tuple[int, int, int]:
    """(elements, prefix levels L, AND words per element)."""
    n = need.get("bits")
    if not 3 <= n <= 64:
        raise ValueError(f"bit-decomposition sign test on {n} bits is not possible")
    levels = math.ceil(math.log2(n - 1))
    return math.prod(need.get("shape")), levels, 2 * levels


def own(need, index: int, seed: bytes, party: int) -> dict[str, torch.Tensor]:
    count, _, words = params(need)
    out = {"a": prg.expand(seed, index, LABEL_A, (words, count)),
           "b": prg.expand(seed, index, LABEL_B, (words, count)),
           "rho_b": prg.expand(seed, index, LABEL_RB, (count,)) & 1}
    if party == 0:
        out["c"] = prg.expand(seed, index, LABEL_C, (words, count))
        out["rho_a"] = prg.expand(seed, index, LABEL_RA, (count,))
    return out


def shapes(need, party: int):
    count, _, words = params(need)
    if party == 0:
        return {}
    return {"c": ((words, count), torch.int64), "rho_a": ((count,), torch.int64)}


def dealer(need, index: int, s0: bytes, s1: bytes) -> tuple[dict, dict]:
    a, b = own(need, index, s0, 0), own(need, index, s1, 1)
    and_c = (a["a"] ^ b["a"]) & (a["b"] ^ b["b"])
    rho = a["rho_b"] ^ b["rho_b"]
    return {}, {"c": and_c ^ a["c"], "rho_a": rho - a["rho_a"]}


def _and(party, tag: str, pairs, m: dict, first: int):
    """AND of XOR-shared word pairs [(u, v), ...], all in one round."""
    idx = range(first, first + len(pairs))
    masked = torch.stack([u ^ m["a"][i] for (u, _), i in zip(pairs, idx)]
                         + [v ^ m["b"][i] for (_, v), i in zip(pairs, idx)])
    opened = masked ^ party.channel.exchange(tag, masked)
    out = []
    for j, i in enumerate(idx):
        d, e = opened[j], opened[len(pairs) + j]
        z = (d & m["b"][i]) ^ (e & m["a"][i]) ^ m["c"][i]
        if party.index == 0:
            z = z ^ (d & e)
        out.append(z)
    return out


def sign_bit(party, x: torch.Tensor, need, m: dict, scope: str) -> torch.Tensor:
    """Arithmetic shares (integer 0/1) of [x < 0] for flat int64 shares x."""
    n = need.get("bits")
    _, levels, _ = params(need)
    zero = torch.zeros_like(x)
    u, v = (x, zero) if party.index == 0 else (zero, x)
    p0 = x                                      # XOR shares of x0 ^ x1
    (g,) = _and(party, f"{scope}.and0", [(u, v)], m, 0)
    p = p0
    used = 1
    for lvl in range(levels):
        j = 1 << lvl
        last = lvl == levels - 1
        pairs = [(p, g << j)] + ([] if last else [(p, p << j)])
        res = _and(party, f"{scope}.and{lvl + 1}", pairs, m, used)
        used += len(pairs)
        g = g ^ res[0]
        if not last:
            p = res[1]
    s = ((p0 >> (n - 1)) ^ (g >> (n - 2))) & 1
    t = (s ^ m["rho_b"]).to(torch.uint8)
    t = (t ^ party.channel.exchange(f"{scope}.b2a", t)).to(torch.int64)
    bit = (1 - 2 * t) * m["rho_a"]
    if party.index == 0:
        bit = bit + t
    return bit
