"""A two-party harness for the raw protocols of ``mpc.protocol`` (no family, no model).

    pair = ProtocolPair(needs, root, frac_bits=16)   # stores + material from a dealer
    z0, z1 = pair.run(lambda p: protocol.mul(p, xs[p.index], ys[p.index], "m"))
    pair.reveal(z0, z1)                              # sum of the shares, in the ring

Both parties have their own ``MaterialStore`` under ``root``, fetch their material from an
in-process dealer (``tests.helpers.InProcessDealer``, over metered in-memory links, as
the family does), and run over an in-memory channel pair on two threads
(``protocols.channel.run_pair``). Every ``run`` starts a new epoch on both channels, runs
in the given meter phase, and records the traffic it caused in ``last_traffic`` (one
``Counters`` per party).

Test data (inputs, the random split of an input into shares) comes from seeded
``torch.Generator``s; the protocol's own randomness (dealer seeds) is never seeded.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

from mpc import material
from mpc.dealer import fetch_material
from mpc.protocol import CLIENT, SERVER, Party
from protocols.config import CompareConfig
from protocols.channel import memory_pair, run_pair
from protocols.metering import Counters, Meter
from protocols.needs import Need, Needs
from protocols.store import MaterialStore
from tests.helpers import InProcessDealer

ROLES = ("client", "server")
_session_ids = itertools.count()

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


def ring_random(shape, gen: torch.Generator) -> torch.Tensor:
    """Uniform int64 ring elements from a seeded generator (test data only)."""
    return torch.randint(INT64_MIN, INT64_MAX, tuple(shape), dtype=torch.int64, generator=gen)


def split(x: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of the ring tensor ``x``: a random split (``gen`` given) or (x, 0)."""
    if gen is None:
        return x.clone(), torch.zeros_like(x)
    r = ring_random(x.shape, gen)
    return x - r, r


def ring_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


class ProtocolPair:
    """Client and server ``Party`` objects with material for ``needs``, ready to run."""

    def __init__(self, needs: Needs, root: str | Path, *, frac_bits: int = 16,
                 session_id: str | None = None, recv_timeout: float = 20.0):
        self.needs = needs
        self.frac_bits = frac_bits
        self.session_id = session_id or f"h{next(_session_ids)}"
        self.meters = (Meter("client"), Meter("server"))
        self.channels = memory_pair(self.meters, session_id=self.session_id,
                                    recv_timeout=recv_timeout)
        self.dealer = InProcessDealer()
        self.stores = tuple(
            MaterialStore(root, party=ROLES[i], session_id=self.session_id, family="mpc-test",
                          frac_bits=frac_bits, needs=needs)
            for i in range(2))
        self._fetch()
        self.parties = tuple(Party(i, self.channels[i], self.stores[i], frac_bits)
                             for i in range(2))
        self.last_traffic: tuple[Counters, Counters] | None = None

    def _fetch(self) -> None:
        def fetch(i):
            meter = self.meters[i]
            link = self.dealer.connect_for(meter, self.session_id)()
            try:
                with meter.in_phase("offline"), meter.in_scope("dealer"):
                    fetch_material(link, self.stores[i], role=ROLES[i],
                                   session_id=self.session_id, frac_bits=self.frac_bits,
                                   needs=self.needs)
            finally:
                link.close()

        run_pair(lambda: fetch(CLIENT), lambda: fetch(SERVER), timeout=60)
        if self.dealer.errors:
            raise self.dealer.errors[0]

    # -- running ---------------------------------------------------------------------------
    def run(self, fn0, fn1=None, *, phase: str = "online"):
        """Run ``fn0(client_party)`` and ``fn1(server_party)`` (``fn1`` defaults to
        ``fn0``) on two threads in a fresh epoch; returns both results."""
        fn1 = fn0 if fn1 is None else fn1
        snaps = [m.snapshot() for m in self.meters]

        def side(i, fn):
            party = self.parties[i]
            party.channel.begin_epoch()
            with party.channel.meter.in_phase(phase):
                return fn(party)

        out = run_pair(lambda: side(CLIENT, fn0), lambda: side(SERVER, fn1), timeout=60)
        self.last_traffic = tuple(m.since(s, phase) for m, s in zip(self.meters, snaps))
        return out

    @staticmethod
    def reveal(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Reconstruct a shared value (test side, no protocol)."""
        return z0 + z1

    # -- constant-operand masks --------------------------------------------------------------
    def masked_weight(self, key: str, w_ring: torch.Tensor) -> torch.Tensor:
        """F = W - B for the server-known mask B of weight ``key`` (what the server opens to
        the client once per session). Computed from the server's own seed, as the family does."""
        return w_ring - material.const_mask(self.stores[SERVER].seed, self.needs, key)

    def close(self) -> None:
        for s in self.stores:
            s.burn()
        for c in self.channels:
            c.close()


class TempPair(ProtocolPair):
    """A ``ProtocolPair`` in its own temporary directory (for hypothesis examples, where
    pytest's function-scoped ``tmp_path`` cannot be used); a context manager."""

    def __init__(self, needs: Needs, **kw):
        self._tmp = tempfile.TemporaryDirectory(prefix="pinfer-mpc-")
        try:
            super().__init__(needs, self._tmp.name, **kw)
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        finally:
            self._tmp.cleanup()


def trunc_need(scope: str, shape, frac_bits: int) -> Need:
    """The item ``mpc.protocol.truncate`` takes."""
    return Need.make("trunc", scope, shape=tuple(shape), frac_bits=frac_bits)


def needs_of(*items: Need, constants=(), inferences: int = 1) -> Needs:
    return Needs(tuple(items), tuple(constants), inferences)


# comparison settings shared by the nonlinear tests
F_BITS_CMP = 16
FSS40 = CompareConfig(method="fss", bits=40)
FSS64 = CompareConfig(method="fss", bits=64)
BD40 = CompareConfig(method="bitdecomp", bits=40)
BD64 = CompareConfig(method="bitdecomp", bits=64)
EXACT = [FSS40, FSS64, BD40, BD64]


def cid(cfg: CompareConfig) -> str:
    drop = f"-drop{cfg.relu_drop_bits}" if cfg.relu_drop_bits else ""
    return f"{cfg.method}{cfg.bits}{drop}"
