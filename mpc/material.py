"""Correlated randomness: what each party expands from its seed, what the dealer sends.

Seed compression. The dealer draws two fresh seeds per session, s0 for the client (party
0) and s1 for the server (party 1), and hands each party only its own. Every random share
a party can hold without the dealer's help comes from its seed; the dealer computes the
correlated value (A*B, A^2, MSB(r), ...) from both seeds and sends party 1 the one
correction that makes the shares add up. So party 0 stores 16 bytes per session (plus
the masked weights), and only party 1's corrections travel.

Item i uses PRG stream i; labels separate the values inside an item:
  bilinear  A (a_shape): both seeds; B (b_shape): both seeds, or, for a server weight, the
            server-known constant mask (party 1 holds all of B), or, for a cached tensor,
            its shared-only row masks (``mpc.cached``); C = op(A, B): party 0 seed, party 1
            correction "c"
  square    A: both seeds; S = A^2: party 0 seed, party 1 correction "c"
  mul       A, B: both seeds (B of the second operand's shape where that broadcasts to
            A's: ``b_shape``); C = A * B: party 0 seed, party 1 correction "c"
  trunc     r: both seeds; r_msb = MSB(r) and r_mid = (r mod 2^63) >> f as arithmetic
            shares: party 0 seeds, party 1 corrections "msb", "mid"
Constant mask of the k-th weight: B_k from s1 on stream 2^63 + k (server-known).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpc import cached, prg
from protocols.needs import Need, Needs

LABEL_A, LABEL_B, LABEL_C, LABEL_R, LABEL_MSB, LABEL_MID, LABEL_CONST = 1, 2, 3, 4, 5, 6, 7
CONST_STREAM = 1 << 63
MASK63 = (1 << 63) - 1
# explicit arrays the dealer sends party 1 for each kind, in this order
CORRECTIONS = {"bilinear": ("c",), "square": ("c",), "mul": ("c",), "trunc": ("msb", "mid")}


def correction_shapes(need: Need) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the explicit arrays party 1 receives for ``need``."""
    shape = need.get("out_shape") if need.kind == "bilinear" else need.get("shape")
    return {name: tuple(shape) for name in CORRECTIONS[need.kind]}


def bilinear(need: Need):
    """The ring operation of a bilinear item, as a function of (a, b)."""
    op = need.get("op")
    if op == "linear":
        return lambda a, b: a @ b.transpose(-1, -2)
    if op == "matmul":
        return lambda a, b: a @ b
    if op == "matmul_t":
        return lambda a, b: a @ b.transpose(-1, -2)
    if op == "hadamard":
        return lambda a, b: a * b
    if op == "conv2d":
        stride, padding = need.get("stride"), need.get("padding")
        return lambda a, b: F.conv2d(a, b, stride=stride, padding=padding)
    raise ValueError(f"unknown bilinear op {op!r}")


def const_mask(s1: bytes, needs: Needs, key: str) -> torch.Tensor:
    """The server-known mask B of weight ``key``."""
    for k, (name, shape) in enumerate(needs.constants):
        if name == key:
            return prg.expand(s1, CONST_STREAM + k, LABEL_CONST, shape)
    raise KeyError(f"weight {key!r} has no constant mask in the plan")


def own_shares(need: Need, index: int, seed: bytes, party: int) -> dict[str, torch.Tensor]:
    """The shares party ``party`` expands from its own seed for item ``index``."""
    kind = need.kind
    out: dict[str, torch.Tensor] = {}
    if kind == "bilinear":
        out["a"] = prg.expand(seed, index, LABEL_A, need.get("a_shape"))
        if not need.get("const") and not need.get("cached", ""):
            out["b"] = prg.expand(seed, index, LABEL_B, need.get("b_shape"))
        if party == 0:
            out["c"] = prg.expand(seed, index, LABEL_C, need.get("out_shape"))
    elif kind in ("square", "mul"):
        shape = need.get("shape")
        out["a"] = prg.expand(seed, index, LABEL_A, shape)
        if kind == "mul":
            out["b"] = prg.expand(seed, index, LABEL_B, need.get("b_shape", shape))
        if party == 0:
            out["c"] = prg.expand(seed, index, LABEL_C, shape)
    elif kind == "trunc":
        shape = need.get("shape")
        out["r"] = prg.expand(seed, index, LABEL_R, shape)
        if party == 0:
            out["msb"] = prg.expand(seed, index, LABEL_MSB, shape)
            out["mid"] = prg.expand(seed, index, LABEL_MID, shape)
    else:
        raise ValueError(f"unknown material kind {kind!r}")
    return out


def server_correction(need: Need, index: int, s0: bytes, s1: bytes, needs: Needs,
                      masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dealer side: party 1's explicit material for item ``index``."""
    p0 = own_shares(need, index, s0, 0)
    p1 = own_shares(need, index, s1, 1)
    kind = need.kind
    if kind == "bilinear":
        a = p0["a"] + p1["a"]
        const, cached_key = need.get("const"), need.get("cached", "")
        if cached_key:
            rows, full_shape = cached.mask_rows_needed(need)
            full = cached.dealer_mask(s0, s1, cached.run_key(index // len(needs.items), cached_key),
                                      rows, full_shape, need.get("cached_dim"), masks)
            b = cached.view_mask(full, need)
        elif const:
            if const not in masks:
                masks[const] = const_mask(s1, needs, const)
            b = masks[const]
        else:
            b = p0["b"] + p1["b"]
        return {"c": bilinear(need)(a, b) - p0["c"]}
    if kind == "square":
        a = p0["a"] + p1["a"]
        return {"c": a * a - p0["c"]}
    if kind == "mul":
        return {"c": (p0["a"] + p1["a"]) * (p0["b"] + p1["b"]) - p0["c"]}
    if kind == "trunc":
        f = need.get("frac_bits")
        r = p0["r"] + p1["r"]
        msb = (r < 0).to(torch.int64)
        mid = (r & MASK63) >> f
        return {"msb": msb - p0["msb"], "mid": mid - p0["mid"]}
    raise ValueError(f"unknown material kind {kind!r}")
