"""mpc.material, mpc.prg and mpc.dealer: the correlations are right for every kind, seeds
are fresh per session, and the dealer refuses what it must."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from mpc import material, prg
from mpc.dealer import DealerError, DealerSessions, fetch_material, serve_party
from mpc.ops import conv_need, linear_need, matmul_need
from protocols.channel import PeerError, memory_pair
from protocols.metering import Meter
from protocols.needs import Need, Needs
from protocols.store import MaterialStore
from tests.mpc.harness import ProtocolPair, needs_of


def _needs_of_every_kind() -> Needs:
    lin, _ = linear_need("fc", (2, 5), (4, 5), "fc")
    conv, _ = conv_need("cv", (2, 3, 5, 5), (4, 3, 3, 3), "cv", 2, 1)
    mm, _ = matmul_need("mm", (2, 3, 4), (2, 4, 5))
    conv_shared = Need.make("bilinear", "cs", op="conv2d", a_shape=(1, 2, 4, 4),
                            b_shape=(3, 2, 2, 2), out_shape=(1, 3, 3, 3), const="",
                            stride=1, padding=0)
    items = (Need.make("mul", "m", shape=(3, 4)), Need.make("square", "s", shape=(7,)),
             Need.make("trunc", "t16", shape=(256,), frac_bits=16),
             Need.make("trunc", "t18", shape=(256,), frac_bits=18), lin, conv, mm, conv_shared)
    return Needs(items, (("cv.weight", (4, 3, 3, 3)), ("fc.weight", (4, 5))))


EVERY_KIND = _needs_of_every_kind()


def _check_correlation(need, m0, m1, b_const=None):
    """m0, m1: each party's full material for one item (own shares + corrections)."""
    kind = need.kind
    if kind == "trunc":
        f = need.get("frac_bits")
        r = m0["r"] + m1["r"]
        msb, mid = m0["msb"] + m1["msb"], m0["mid"] + m1["mid"]
        assert torch.equal(msb, (r < 0).to(torch.int64))
        assert torch.equal(mid, (r & ((1 << 63) - 1)) >> f)
        # r >> f would differ exactly where MSB(r) = 1: the test sees both cases
        assert (msb == 1).any() and (msb == 0).any()
        return
    a = m0["a"] + m1["a"]
    c = m0["c"] + m1["c"]
    if kind == "square":
        assert torch.equal(c, a * a)
    elif kind == "mul":
        assert torch.equal(c, a * (m0["b"] + m1["b"]))
    else:
        b = b_const if need.get("const") else m0["b"] + m1["b"]
        assert tuple(a.shape) == need.get("a_shape") and tuple(b.shape) == need.get("b_shape")
        assert tuple(c.shape) == need.get("out_shape")
        assert torch.equal(c, material.bilinear(need)(a, b))


def test_own_shares_and_correction_reconstruct_every_kind():
    s0, s1 = prg.new_seed(), prg.new_seed()
    masks: dict[str, torch.Tensor] = {}
    for index in range(len(EVERY_KIND)):
        need = EVERY_KIND.at(index)
        m0 = material.own_shares(need, index, s0, 0)
        m1 = material.own_shares(need, index, s1, 1)
        corr = material.server_correction(need, index, s0, s1, EVERY_KIND, masks)
        assert tuple(corr) == material.CORRECTIONS[need.kind]
        assert not set(corr) & set(m1)  # party 1 holds each value once
        m1.update(corr)
        const = need.get("const") if need.kind == "bilinear" else ""
        b = material.const_mask(s1, EVERY_KIND, const) if const else None
        _check_correlation(need, m0, m1, b)
        if const:
            # the server-known mask: neither party expands a share of B
            assert "b" not in m0 and "b" not in m1
            assert torch.equal(masks[const], b)


def test_material_fetched_from_the_dealer_reconstructs_every_kind(tmp_path):
    pair = ProtocolPair(EVERY_KIND, tmp_path)
    client, server = pair.parties
    for index in range(len(EVERY_KIND)):
        need = EVERY_KIND.at(index)
        m0, m1 = client.take(need), server.take(need)
        const = need.get("const") if need.kind == "bilinear" else ""
        b = material.const_mask(server.store.seed, EVERY_KIND, const) if const else None
        _check_correlation(need, m0, m1, b)
    assert client.store.remaining == server.store.remaining == 0
    # the client stores nothing but its seed: no explicit material file
    assert not (client.store.dir / "material.bin").exists()
    assert len(client.store.seed) == prg.SEED_BYTES


def test_items_and_masks_are_fresh():
    """Every item (also the same need repeated in a pool) and every weight key gets its own
    randomness; the constant mask is the server's (from s1), different per session."""
    need = Need.make("mul", "m", shape=(16,))
    needs = Needs((need,), (("a.weight", (8,)), ("b.weight", (8,))), inferences=2)
    s0, s1 = prg.new_seed(), prg.new_seed()
    item0 = material.own_shares(need, 0, s0, 0)
    item1 = material.own_shares(needs.at(1), 1, s0, 0)
    for k in ("a", "b", "c"):
        assert not torch.equal(item0[k], item1[k])
    assert not torch.equal(item0["a"], item0["b"])
    ma, mb = material.const_mask(s1, needs, "a.weight"), material.const_mask(s1, needs, "b.weight")
    assert not torch.equal(ma, mb)
    assert not torch.equal(ma, material.const_mask(prg.new_seed(), needs, "a.weight"))
    assert torch.equal(ma, material.const_mask(s1, needs, "a.weight"))
    with pytest.raises(KeyError, match="no constant mask"):
        material.const_mask(s1, needs, "c.weight")


def test_prg_is_deterministic_separated_and_checked():
    seed = prg.new_seed()
    assert len(seed) == prg.SEED_BYTES and seed != prg.new_seed()
    a = prg.expand(seed, 5, 1, (1000,))
    assert a.dtype == torch.int64 and torch.equal(a, prg.expand(seed, 5, 1, (1000,)))
    assert torch.equal(prg.expand(seed, 5, 1, (10, 100)).flatten(), a)
    others = [prg.expand(seed, 6, 1, (1000,)), prg.expand(seed, 5, 2, (1000,)),
              prg.expand(prg.new_seed(), 5, 1, (1000,)),
              prg.expand(seed, material.CONST_STREAM + 5, 1, (1000,))]
    for o in others:
        assert (o == a).sum() == 0
    # looks uniform: each of the 64 bit positions is set about half the time
    big = prg.expand(seed, 0, 0, (20_000,))
    for bit in (0, 7, 31, 62, 63):
        frac = ((big >> bit) & 1).to(torch.float64).mean().item()
        assert abs(frac - 0.5) < 0.02, (bit, frac)
    bits = prg.uniform_bits(seed, 0, 0, (100,))
    assert set(bits.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="16 bytes"):
        prg.expand(b"short", 0, 0, (1,))
    with pytest.raises(ValueError, match="out of range"):
        prg.expand(seed, 2 ** 64, 0, (1,))
    with pytest.raises(ValueError, match="out of range"):
        prg.expand(seed, 0, 256, (1,))


# -- the dealer ---------------------------------------------------------------------------------
class Fetch:
    """One party's fetch against a dealer thread that aborts the link when it refuses (as
    ``server.dealer`` does)."""

    def __init__(self, sessions, root, *, role, session_id, needs, verified_role=None,
                 claimed_role=None, frac_bits=16):
        self.meter, self.dealer_meter = Meter(role), Meter("dealer")
        mine, theirs = memory_pair((self.meter, self.dealer_meter), link="dealer",
                                   session_id=session_id, recv_timeout=10)
        self.errors: list[BaseException] = []

        def serve():
            try:
                serve_party(theirs, sessions, verified_role)
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                self.errors.append(exc)
                theirs.abort(f"dealer: {exc}")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.store = MaterialStore(root, party=role, session_id=f"{session_id}x{id(self)}",
                                   family="mpc", frac_bits=frac_bits, needs=needs)
        try:
            with self.meter.in_phase("offline"):
                fetch_material(mine, self.store, role=claimed_role or role,
                               session_id=session_id, frac_bits=frac_bits, needs=needs)
        finally:
            thread.join(10)


def test_dealer_refuses_a_second_fetch_by_the_same_role(tmp_path):
    sessions = DealerSessions()
    needs = needs_of(Need.make("square", "s", shape=(4,)))
    Fetch(sessions, tmp_path, role="client", session_id="sA", needs=needs)
    with pytest.raises(PeerError, match="client already fetched its material"):
        Fetch(sessions, tmp_path, role="client", session_id="sA", needs=needs)
    # the unit underneath
    with pytest.raises(DealerError, match="already fetched"):
        sessions.claim("sA", "client", needs.digest())
    # the server still gets its half; then the dealer forgets the session
    Fetch(sessions, tmp_path, role="server", session_id="sA", needs=needs)
    assert len(sessions) == 0


def test_dealer_refuses_a_mismatched_needs_digest(tmp_path):
    sessions = DealerSessions()
    n1 = needs_of(Need.make("square", "s", shape=(4,)))
    n2 = needs_of(Need.make("square", "s", shape=(5,)))
    Fetch(sessions, tmp_path, role="client", session_id="sB", needs=n1)
    with pytest.raises(PeerError, match="other material than its peer"):
        Fetch(sessions, tmp_path, role="server", session_id="sB", needs=n2)
    with pytest.raises(DealerError, match="other material"):
        sessions.claim("sB", "server", n1.with_inferences(2).digest())
    assert isinstance(DealerError("x"), RuntimeError)


def test_dealer_refuses_roles_that_may_not_fetch(tmp_path):
    sessions = DealerSessions()
    needs = needs_of(Need.make("square", "s", shape=(4,)))
    with pytest.raises(PeerError, match="may not fetch"):
        Fetch(sessions, tmp_path, role="client", claimed_role="dealer", session_id="sC",
              needs=needs)
    with pytest.raises(PeerError, match="certificate of role 'server' asked for 'client'"):
        Fetch(sessions, tmp_path, role="client", verified_role="server", session_id="sC",
              needs=needs)
    assert len(sessions) == 0  # nothing was handed out


def test_dealer_refuses_a_fetch_after_the_session_completed():
    sessions = DealerSessions()
    digest = needs_of(Need.make("square", "s", shape=(4,))).digest()
    s0, _ = sessions.claim("sD", "client", digest)
    sessions.claim("sD", "server", digest)
    with pytest.raises(DealerError):
        sessions.claim("sD", "client", digest)   # a replayed or confused client


def test_seeds_differ_per_session_and_per_party(tmp_path):
    sessions = DealerSessions()
    needs = needs_of(Need.make("square", "s", shape=(4,)))
    seeds = {}
    for sid in ("s1", "s2"):
        for role in ("client", "server"):
            seeds[sid, role] = Fetch(sessions, tmp_path, role=role, session_id=sid,
                                     needs=needs).store.seed
    assert len(set(seeds.values())) == 4
    assert all(len(s) == prg.SEED_BYTES for s in seeds.values())
    assert len(sessions) == 0


def test_dealer_traffic_is_exactly_seed_plus_corrections(tmp_path):
    sessions = DealerSessions()
    needs = EVERY_KIND.with_inferences(2)
    c = Fetch(sessions, tmp_path, role="client", session_id="sE", needs=needs)
    s = Fetch(sessions, tmp_path, role="server", session_id="sE", needs=needs)
    done = len(json.dumps({"items": len(needs), "frac_bits": 16}, sort_keys=True))
    corr = 0
    for i in range(len(needs)):
        need = needs.at(i)
        if need.kind == "trunc":
            corr += 2 * need.get("shape")[0]
        elif need.kind == "bilinear":
            corr += torch.Size(need.get("out_shape")).numel()
        else:
            corr += torch.Size(need.get("shape")).numel()
    assert c.meter.total("offline").payload_received == prg.SEED_BYTES + done
    assert s.meter.total("offline").payload_received == prg.SEED_BYTES + 8 * corr + done
    assert s.store.written == len(needs)
    # 2 rounds per party: the request, then the dealer's answer
    assert len(c.meter.total("offline").rounds) == 2
    assert len(s.meter.total("offline").rounds) == 2
