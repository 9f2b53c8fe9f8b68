"""Cached operands (a KV cache): rows keep shared-only masks, products are exact in the
ring, a step opens only the fresh operand and the new rows, and a row never opens twice."""

from __future__ import annotations

import pytest
import torch

from mpc import cached, prg, protocol
from mpc.protocol import CLIENT, SERVER
from protocols.needs import Needs
from protocols.store import MaterialError
from tests.mpc.harness import ProtocolPair, ring_random, split

SHAPE_ROW = (1, 2, 1, 3)        # (B, H, 1, dh): one cached row


def test_expand_range_is_a_window_of_expand():
    seed = prg.new_seed()
    full = prg.expand(seed, 7, 3, (41,))
    for start, count in [(0, 41), (1, 5), (3, 10), (40, 1), (17, 24)]:
        assert torch.equal(prg.expand_range(seed, 7, 3, start, count), full[start:start + count])


def test_mask_shares_are_per_key_and_per_run():
    seed = prg.new_seed()
    a = cached.mask_rows(seed, cached.run_key(0, "l0.k"), 0, 4, (1, 2, 4, 3), 2)
    assert a.shape == (1, 2, 4, 3)
    # rows generated in pieces equal rows generated at once
    b = torch.cat([cached.mask_rows(seed, cached.run_key(0, "l0.k"), 0, 1, (1, 2, 1, 3), 2),
                   cached.mask_rows(seed, cached.run_key(0, "l0.k"), 1, 3, (1, 2, 3, 3), 2)], 2)
    assert torch.equal(a, b)
    other_key = cached.mask_rows(seed, cached.run_key(0, "l0.v"), 0, 4, (1, 2, 4, 3), 2)
    other_run = cached.mask_rows(seed, cached.run_key(1, "l0.k"), 0, 4, (1, 2, 4, 3), 2)
    assert not torch.equal(a, other_key) and not torch.equal(a, other_run)


class _Y:
    """Shape and identity of cached tensor "l0.k" as a plan sees it: the whole tensor, or
    a view of rows from ``start`` in clusters of ``cluster`` rows."""

    def __init__(self, shape, start=0, cluster=0):
        self.shape, self.key, self.dim, self.start, self.cluster = shape, "l0.k", 2, start, cluster


def _needs(steps, inferences=1):
    items = [cached.cached_need("s", x, _Y(y), t)[0] for x, y, t in steps]
    return Needs(tuple(items), (), inferences)


def test_products_with_a_cached_operand_are_exact_and_open_only_the_fresh_operand(tmp_path):
    gen = torch.Generator().manual_seed(0)
    k1, k2 = ring_random((1, 2, 3, 3), gen), ring_random(SHAPE_ROW, gen)
    q = ring_random((1, 2, 1, 3), gen)
    p = ring_random((1, 2, 1, 4), gen)
    needs = _needs([(q.shape, (1, 2, 3, 3), True), (q.shape, (1, 2, 4, 3), True),
                    (p.shape, (1, 2, 4, 3), False)])
    pair = ProtocolPair(needs, tmp_path)
    ks1, ks2, qs, ps = split(k1, gen), split(k2, gen), split(q, gen), split(p, gen)

    def step(party):
        i = party.index
        (k,) = protocol.cache_append(party, [("l0.k", None, ks1[i], 2)], 0, "s")
        s1 = protocol.bilinear_cached(party, qs[i], k, needs.items[0], "s", 0)
        (k,) = protocol.cache_append(party, [("l0.k", k, ks2[i], 2)], 0, "s")
        return k, s1

    (kc, s1c), (ks, s1s) = pair.run(step)
    assert torch.equal(s1c + s1s, q @ k1.transpose(-1, -2))
    both = torch.cat([k1, k2], 2)
    assert torch.equal(kc.share + ks.share, both)
    assert torch.equal(kc.masked, ks.masked)          # both hold the same opened F
    assert not torch.equal(kc.masked, both)           # F = K - B, B hidden from both

    z = pair.run(lambda party: protocol.bilinear_cached(
        party, qs[party.index], (kc, ks)[party.index], needs.items[1], "s", 0))
    assert torch.equal(z[0] + z[1], q @ both.transpose(-1, -2))
    # only the fresh query crosses the wire: numel(q) * 8 bytes each way, one round
    assert all(t.payload_sent == q.numel() * 8 and len(t.rounds) == 1 for t in pair.last_traffic)

    z = pair.run(lambda party: protocol.bilinear_cached(
        party, ps[party.index], (kc, ks)[party.index], needs.items[2], "s", 0))
    assert torch.equal(z[0] + z[1], p @ both)
    assert all(t.payload_sent == p.numel() * 8 for t in pair.last_traffic)


def test_appending_opens_only_the_new_rows(tmp_path):
    gen = torch.Generator().manual_seed(1)
    pair = ProtocolPair(_needs([((1, 2, 1, 3), (1, 2, 1, 3), True)]), tmp_path)
    k, v = split(ring_random(SHAPE_ROW, gen), gen), split(ring_random(SHAPE_ROW, gen), gen)
    pair.run(lambda party: protocol.cache_append(
        party, [("l0.k", None, k[party.index], 2), ("l0.v", None, v[party.index], 2)], 0, "s"))
    n = 2 * torch.Size(SHAPE_ROW).numel()
    assert all(t.payload_sent == n * 8 and len(t.rounds) == 1 for t in pair.last_traffic)


def test_a_row_is_never_opened_twice(tmp_path):
    gen = torch.Generator().manual_seed(2)
    pair = ProtocolPair(_needs([((1, 2, 1, 3), (1, 2, 1, 3), True)]), tmp_path)
    k = split(ring_random(SHAPE_ROW, gen), gen)
    pair.run(lambda party: protocol.cache_append(party, [("l0.k", None, k[party.index], 2)], 0, "s"))
    # rewriting row 0 of the same tensor in the same run would open K_new - K_old
    with pytest.raises(MaterialError, match="opened twice"):
        protocol.cache_append(pair.parties[CLIENT], [("l0.k", None, k[0], 2)], 0, "s")
    # the next run's tensor is a new id: its row 0 opens fine (store-side check only)
    pair.stores[SERVER].mark_opened(f"cached:{cached.run_key(1, 'l0.k')}#0")


def test_material_of_another_run_is_refused(tmp_path):
    gen = torch.Generator().manual_seed(3)
    needs = _needs([((1, 2, 1, 3), (1, 2, 1, 3), True)], inferences=2)
    pair = ProtocolPair(needs, tmp_path)
    k, q = split(ring_random(SHAPE_ROW, gen), gen), split(ring_random(SHAPE_ROW, gen), gen)

    def run1_with_run0_material(party):
        (kk,) = protocol.cache_append(party, [("l0.k", None, k[party.index], 2)], 1, "s")
        return protocol.bilinear_cached(party, q[party.index], kk, needs.items[0], "s", 1)

    with pytest.raises(MaterialError, match="another run"):
        pair.run(run1_with_run0_material)


def test_products_with_row_ranges_and_cluster_views(tmp_path):
    """A public row range and a clustered view (rows grouped c at a time, the layout of a
    cluster gather) keep the cached masks: exact, and only the fresh operand opens."""
    gen = torch.Generator().manual_seed(4)
    k = ring_random((1, 2, 8, 3), gen)
    ks = split(k, gen)
    q = ring_random((1, 2, 1, 3), gen)
    s = ring_random((1, 2, 2, 3), gen)        # e.g. a one-hot over 3 clusters of 2 rows
    qs, ss = split(q, gen), split(s, gen)

    needs = Needs((cached.cached_need("s", q.shape, _Y((1, 2, 3, 3), 4, 1), True)[0],
                   cached.cached_need("s", s.shape, _Y((1, 2, 3, 6), 2, 2), False)[0]))
    pair = ProtocolPair(needs, tmp_path)

    def step(party):
        i = party.index
        (kk,) = protocol.cache_append(party, [("l0.k", None, ks[i], 2)], 0, "s")
        z1 = protocol.bilinear_cached(party, qs[i], cached.view(kk, 4, 3), needs.items[0], "s", 0)
        z2 = protocol.bilinear_cached(party, ss[i], cached.view(kk, 2, 6, 2), needs.items[1], "s", 0)
        return z1, z2

    (a1, a2), (b1, b2) = pair.run(step)
    assert torch.equal(a1 + b1, q @ k[:, :, 4:7].transpose(-1, -2))
    assert torch.equal(a2 + b2, s @ k[:, :, 2:8].reshape(1, 2, 3, 6))
    with pytest.raises(ValueError, match="bad view"):
        cached.view(cached.CachedShare("l0.k", 2, ks[0], ks[0], ks[0]), 6, 4)
