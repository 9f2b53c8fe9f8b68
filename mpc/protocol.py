"""Two-party additive secret sharing over Z_2^64: the online protocols.

A value x is held as x = x_0 + x_1 (mod 2^64), party 0 the client, party 1 the server.
Linear operations are local. Every product consumes fresh dealer material from the store
in plan order; a server weight W uses its constant-operand mask B (server-known), whose
opening W - B the client received once, offline.

Leaks: nothing beyond declared reveals. Every opening is of a value masked by a fresh
uniform ring element (x - A, x + 2^62 + r), so each party's view is uniform and
independent of the other party's inputs; the only values in the clear are those passed
through ``reveal_to`` (logged in the meter's reveal log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpc import cached, kinds, material
from protocols.channel import Channel
from protocols.config import CompareConfig
from protocols.needs import Need
from protocols.store import MaterialError, MaterialStore

CLIENT, SERVER = 0, 1
PARTY_NAMES = ("client", "server")


@dataclass
class Party:
    """One party's context: who it is, its link to the peer, its material."""

    index: int
    channel: Channel
    store: MaterialStore
    frac_bits: int
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def name(self) -> str:
        return PARTY_NAMES[self.index]

    def take(self, need: Need) -> dict[str, torch.Tensor]:
        """Own shares (from the seed) plus the dealer's explicit corrections (party 1)."""
        want = kinds.explicit_shapes(need, self.index)
        index, explicit = self.store.take(need, explicit=bool(want))
        got = {k: (tuple(v.shape), v.dtype) for k, v in explicit.items()}
        if got != {k: (tuple(s), d) for k, (s, d) in want.items()}:
            raise MaterialError(f"{self.name}: stored material {got} for item {index} does "
                                f"not match the plan {want}")
        shares = kinds.own(need, index, self.store.seed, self.index)
        shares.update(explicit)
        return shares


def open_value(party: Party, tag: str, share: torch.Tensor) -> torch.Tensor:
    """Both parties learn share_0 + share_1 (one round). Only for masked values."""
    return share + party.channel.exchange(tag, share)


def reveal_to(party: Party, receiver: int, tag: str, share: torch.Tensor, what: str):
    """Open a shared value to ``receiver`` only (one message). Logged as a reveal."""
    party.channel.meter.reveal(PARTY_NAMES[receiver], tag, share.shape, what)
    if party.index == receiver:
        return share + party.channel.recv_like(tag, share)
    party.channel.send(tag, share)
    return None


def truncate(party: Party, x: torch.Tensor, scope: str, bits: int | None = None) -> torch.Tensor:
    """Divide a shared value by 2^f (or 2^bits; probabilistic rounding, error 0 or 1 ulp).

    Protocol (TruncAPr, Escudero et al. CRYPTO 2020 sec. 5.1, as in SPU semi2k), valid for
    x in [-2^62, 2^62):
      1. open c = x + 2^62 + r (party 0 adds 2^62), r uniform from the dealer;
      2. b = c63 XOR MSB(r) as an arithmetic share: c63 + r_msb - 2 c63 r_msb;
      3. y = ((c mod 2^63) >> f) - r_mid + 2^(63-f) b - 2^(62-f); public terms on party 0.
    Communication: 1 round; each party sends numel * 8 bytes.
    Leaks: nothing (c is uniform given x).
    """
    f = party.frac_bits if bits is None else bits
    need = Need.make("trunc", scope, shape=tuple(x.shape), frac_bits=f)
    m = party.take(need)
    masked = x + m["r"]
    if party.index == CLIENT:
        masked = masked + (1 << 62)
    c = open_value(party, f"{scope}.trunc", masked)
    c63 = (c < 0).to(torch.int64)
    b = m["msb"] * (1 - 2 * c63)
    y = (b << (63 - f)) - m["mid"]
    if party.index == CLIENT:
        y = y + ((c & material.MASK63) >> f) + (c63 << (63 - f)) - (1 << (62 - f))
    return y


def bilinear_with_weight(party: Party, x: torch.Tensor, need: Need, weight: torch.Tensor | None,
                         masked_weight: torch.Tensor, scope: str) -> torch.Tensor:
    """op(X, W) for shared X and a server weight W with server-known mask B (F = W - B).

    Protocol: open E = X - A (1 round, both directions); party 0 outputs op(A_0, F) + C_0,
    party 1 outputs op(E, W) + op(A_1, F) + C_1. Sum: op(E + A, W) = op(X, W).
    Communication: 1 round; each party sends numel(X) * 8 bytes.
    Leaks: nothing (E is uniform; F was opened once per session and hides W under B).
    """
    m = party.take(need)
    op = material.bilinear(need)
    e = open_value(party, f"{scope}.open", x - m["a"])
    z = op(m["a"], masked_weight) + m["c"]
    if party.index == SERVER:
        z = z + op(e, weight)
    return z


def bilinear_shared(party: Party, x: torch.Tensor, y: torch.Tensor, need: Need,
                    scope: str) -> torch.Tensor:
    """op(X, Y) for two shared activations (Beaver: open X - A and Y - B in one round).

    Result share: [p=0] op(E, D) + op(E, B_p) + op(A_p, D) + C_p.
    Communication: 1 round; each party sends (numel(X) + numel(Y)) * 8 bytes.
    Leaks: nothing.
    """
    m = party.take(need)
    op = material.bilinear(need)
    ed = open_value(party, f"{scope}.open",
                    torch.cat([(x - m["a"]).flatten(), (y - m["b"]).flatten()]))
    e = ed[: x.numel()].reshape(x.shape)
    d = ed[x.numel():].reshape(y.shape)
    z = op(e, m["b"]) + op(m["a"], d) + m["c"]
    if party.index == CLIENT:
        z = z + op(e, d)
    return z


def square(party: Party, x: torch.Tensor, scope: str) -> torch.Tensor:
    """X^2 with a square pair (A, A^2): open E = X - A; X^2 = E^2 + 2EA + A^2.

    Communication: 1 round; each party sends numel * 8 bytes. Leaks: nothing.
    """
    m = party.take(Need.make("square", scope, shape=tuple(x.shape)))
    e = open_value(party, f"{scope}.open", x - m["a"])
    z = 2 * e * m["a"] + m["c"]
    if party.index == CLIENT:
        z = z + e * e
    return z


def mul_need(scope: str, x_shape, y_shape) -> Need:
    """The triple of X * Y. Where Y broadcasts to X's shape and is smaller (a per-row
    scale), its mask B has Y's own shape and C = A * B broadcast, so only numel(Y) elements
    of Y - B are opened instead of numel(X)."""
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    if y_shape != x_shape and tuple(torch.broadcast_shapes(x_shape, y_shape)) == x_shape:
        return Need.make("mul", scope, shape=x_shape, b_shape=y_shape)
    return Need.make("mul", scope, shape=x_shape)


def mul(party: Party, x: torch.Tensor, y: torch.Tensor, scope: str) -> torch.Tensor:
    """Elementwise X * Y (Y broadcast to X's shape) with a Beaver triple: open E = X - A
    and D = Y - B in one message; XY = E D + E B + A D + C.
    Communication: 1 round; each party sends (numel(X) + numel(Y or B)) * 8 bytes.
    Leaks: nothing (A and B are uniform)."""
    need = mul_need(scope, x.shape, y.shape)
    m = party.take(need)
    if need.get("b_shape", None) is None:
        ed = open_value(party, f"{scope}.open", torch.stack([x - m["a"], y - m["b"]]))
        e, d = ed[0], ed[1]
    else:
        n = x.numel()
        ed = open_value(party, f"{scope}.open",
                        torch.cat([(x - m["a"]).reshape(-1), (y - m["b"]).reshape(-1)]))
        e, d = ed[:n].reshape(x.shape), ed[n:].reshape(y.shape)
    z = e * m["b"] + m["a"] * d + m["c"]
    if party.index == CLIENT:
        z = z + e * d
    return z


def cache_append(party: Party, entries, generation: int, scope: str):
    """Append rows to cached tensors (``mpc.cached``): open F = X_new - B_new for every
    entry in one round. ``entries``: (key, CachedShare or None, new share, dim).
    Communication: 1 round; each party sends the new rows' elements * 8 bytes.
    Leaks: nothing (B_new is uniform and known to neither party)."""
    opened, parts = [], []
    for key, old, new, dim in entries:
        start = 0 if old is None else old.rows
        full = cached.run_key(generation, key)
        for r in range(start, start + new.shape[dim]):
            party.store.mark_opened(f"cached:{full}#{r}")
        mask = cached.mask_rows(party.store.seed, full, start, new.shape[dim], new.shape, dim)
        parts.append((new - mask).flatten())
        opened.append(mask)
    flat = open_value(party, f"{scope}.cache", torch.cat(parts))
    out, at = [], 0
    for (key, old, new, dim), mask in zip(entries, opened):
        f = flat[at: at + new.numel()].reshape(new.shape)
        at += new.numel()
        if old is None:
            out.append(cached.CachedShare(key, dim, new, f, mask))
        else:
            out.append(cached.CachedShare(key, dim, torch.cat([old.share, new], dim),
                                          torch.cat([old.masked, f], dim),
                                          torch.cat([old.mask, mask], dim)))
    return out


def bilinear_cached(party: Party, x: torch.Tensor, y: "cached.CachedShare", need: Need,
                    scope: str, generation: int) -> torch.Tensor:
    """op(X, Y) for a fresh shared X and a cached Y: open only E = X - A (1 round; each
    party sends numel(X) * 8 bytes); Y's opened F = Y - B serves every product.
    Leaks: nothing."""
    m = party.take(need)
    if (party.store.cursor - 1) // len(party.store.needs.items) != generation:
        raise MaterialError(f"{party.name}: cached product of run {generation} met material "
                            f"of another run")
    op = material.bilinear(need)
    e = open_value(party, f"{scope}.open", x - m["a"])
    z = op(e, y.mask) + op(m["a"], y.masked) + m["c"]
    if party.index == CLIENT:
        z = z + op(e, y.masked)
    return z
