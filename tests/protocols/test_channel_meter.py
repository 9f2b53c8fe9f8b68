"""Channel (in-memory pair) and Meter: messages, errors, rounds, bytes, scopes, reveals."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from protocols.channel import PeerError, memory_pair, run_pair
from protocols.metering import Counters, Meter, Reveal
from protocols.wire.codec import FrameError


def pair(**kw):
    m0, m1 = Meter("client"), Meter("server")
    c0, c1 = memory_pair((m0, m1), session_id="s", **kw)
    return m0, m1, c0, c1


def rounds(meter: Meter, phase: str = "online") -> int:
    return len(meter.total(phase).rounds)


def online(meter: Meter, fn):
    def run():
        with meter.in_phase("online"):
            return fn()
    return run


# -- messages -------------------------------------------------------------------------------

def test_send_recv_every_dtype():
    _, _, c0, c1 = pair()
    xs = [torch.arange(-3, 3, dtype=torch.int64), torch.randn(2, 3, dtype=torch.float64),
          torch.randn(4, dtype=torch.float32), torch.arange(5, dtype=torch.uint8),
          torch.tensor(7, dtype=torch.int64), torch.zeros(0, 3)]
    for i, x in enumerate(xs):
        c0.send(f"t{i}", x)
    for i, x in enumerate(xs):
        y = c1.recv(f"t{i}")
        assert y.dtype == x.dtype and y.shape == x.shape and torch.equal(y, x)


def test_exchange_swaps_tensors():
    _, _, c0, c1 = pair()
    a, b = torch.arange(6).reshape(2, 3), -torch.arange(6).reshape(2, 3)
    got0, got1 = run_pair(lambda: c0.exchange("x", a), lambda: c1.exchange("x", b))
    assert torch.equal(got0, b) and torch.equal(got1, a)


def test_both_directions_interleave():
    _, _, c0, c1 = pair()

    def p0():
        c0.send("q", torch.tensor([1]))
        return c0.recv("r")

    def p1():
        q = c1.recv("q")
        c1.send("r", q + 41)
        return q

    r, q = run_pair(p0, p1)
    assert r.item() == 42 and q.item() == 1


def test_tag_mismatch_raises_frame_error():
    _, _, c0, c1 = pair()
    c0.send("fc1.open", torch.zeros(2))
    with pytest.raises(FrameError, match="got frame 'fc1.open' where 'fc2.open' was due"):
        c1.recv("fc2.open")


def test_recv_timeout_raises_peer_error_quickly():
    _, _, c0, _ = pair(recv_timeout=0.2)
    t = time.monotonic()
    with pytest.raises(PeerError, match="no frame for 'late'"):
        c0.recv("late")
    assert time.monotonic() - t < 2.0


def test_abort_reaches_a_waiting_peer():
    _, _, c0, c1 = pair(recv_timeout=10)
    waiting = threading.Event()

    def p0():
        assert waiting.wait(5)                 # the peer is (about to be) blocked in recv
        c0.abort("out of material for fc1")

    def p1():
        waiting.set()
        with pytest.raises(PeerError, match="peer aborted: out of material for fc1"):
            c1.recv("fc1.open")
        return "raised"

    assert run_pair(p0, p1, timeout=10) == [None, "raised"]
    with pytest.raises(PeerError, match="closed channel"):
        c0.send("x", torch.zeros(1))
    with pytest.raises(PeerError, match="closed channel"):   # the aborted-at side is closed too
        c1.send("x", torch.zeros(1))
    c0.abort("again")                                        # idempotent


def test_close_ends_the_peers_recv():
    _, _, c0, c1 = pair(recv_timeout=10)
    c0.close()
    with pytest.raises(PeerError, match="peer closed the stream while 'x' was due"):
        c1.recv("x")


def test_json_round_trip():
    _, _, c0, c1 = pair()
    obj = {"family": "mpc", "shape": [1, 64], "ok": True, "name": "naïve ✓", "none": None}
    c0.send_json("meta", obj)
    assert c1.recv_json("meta") == obj


@pytest.mark.parametrize("raw,match", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_malformed_json_raises_frame_error(raw, match):
    _, _, c0, c1 = pair()
    c0.send("meta", torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw
            else torch.zeros(0, dtype=torch.uint8))
    with pytest.raises(FrameError, match=match):
        c1.recv_json("meta")


@pytest.mark.parametrize("tensor", [torch.zeros(3), torch.zeros(2, 2, dtype=torch.uint8)],
                         ids=["float", "2d"])
def test_json_needs_a_byte_string(tensor):
    _, _, c0, c1 = pair()
    c0.send("meta", tensor)
    with pytest.raises(FrameError, match="should be a byte string"):
        c1.recv_json("meta")


# -- rounds ---------------------------------------------------------------------------------

def test_one_exchange_is_one_round_for_both():
    m0, m1, c0, c1 = pair()
    run_pair(online(m0, lambda: c0.exchange("x", torch.zeros(3))),
             online(m1, lambda: c1.exchange("x", torch.ones(3))))
    assert rounds(m0) == rounds(m1) == 1


def test_request_then_reply_is_two_rounds():
    m0, m1, c0, c1 = pair()

    def p0():
        c0.send("req", torch.zeros(1))
        c0.recv("rep")

    def p1():
        c1.recv("req")
        c1.send("rep", torch.zeros(1))

    run_pair(online(m0, p0), online(m1, p1))
    assert rounds(m0) == rounds(m1) == 2


def test_two_sends_then_one_reply_is_two_rounds():
    m0, m1, c0, c1 = pair()

    def p0():
        c0.send("a", torch.zeros(1))
        c0.send("b", torch.zeros(2))
        c0.recv("rep")

    def p1():
        c1.recv("a")
        c1.recv("b")
        c1.send("rep", torch.zeros(1))

    run_pair(online(m0, p0), online(m1, p1))
    assert rounds(m0) == rounds(m1) == 2
    assert m0.total("online").messages_sent == 2 and m1.total("online").messages_received == 2


def test_sequences_of_exchanges_and_a_ping_pong_chain():
    m0, m1, c0, c1 = pair()

    def p0():
        for i in range(3):
            c0.exchange(f"x{i}", torch.zeros(1))
        c0.send("a", torch.zeros(1))
        c0.recv("b")
        c0.send("c", torch.zeros(1))

    def p1():
        for i in range(3):
            c1.exchange(f"x{i}", torch.zeros(1))
        c1.recv("a")
        c1.send("b", torch.zeros(1))
        c1.recv("c")

    run_pair(online(m0, p0), online(m1, p1))
    assert rounds(m0) == rounds(m1) == 3 + 3


def _one_way_then_exchange(begin_epoch: bool):
    m0, m1, c0, c1 = pair()

    def party(m, c, first):
        with m.in_phase("offline"):
            if begin_epoch:
                c.begin_epoch()
            if first:
                c.send("setup", torch.zeros(4))
            else:
                c.recv("setup")
        with m.in_phase("online"):
            if begin_epoch:
                c.begin_epoch()
            c.exchange("x", torch.zeros(2))

    run_pair(lambda: party(m0, c0, True), lambda: party(m1, c1, False))
    return m0, m1


def test_begin_epoch_resets_the_round_clock():
    m0, m1 = _one_way_then_exchange(begin_epoch=True)
    assert rounds(m0, "offline") == rounds(m1, "offline") == 1
    assert rounds(m0) == rounds(m1) == 1


def test_without_begin_epoch_the_clock_carries_over():
    # what begin_epoch is for: the receiver of the one-way message would start the next
    # phase one round later than the sender, and the exchange would look like two rounds
    m0, m1 = _one_way_then_exchange(begin_epoch=False)
    assert rounds(m0) == rounds(m1) == 2


def test_links_have_their_own_clocks_and_rounds_add_up():
    m = Meter("client")
    peer, dealer = Meter("server"), Meter("dealer")
    p0, p1 = memory_pair((m, peer), link="peer", session_id="s")
    d0, d1 = memory_pair((m, dealer), link="dealer", session_id="s")
    with m.in_phase("online"):
        run_pair(lambda: p0.exchange("x", torch.zeros(1)), lambda: p1.exchange("x", torch.zeros(1)))
        run_pair(lambda: d0.exchange("y", torch.zeros(1)), lambda: d1.exchange("y", torch.zeros(1)))
    assert rounds(m) == 2


# -- bytes and messages ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float32, torch.uint8],
                         ids=str)
def test_payload_bytes_are_exact_and_frame_bytes_larger(dtype):
    m0, m1, c0, c1 = pair()
    x = torch.zeros(3, 5, dtype=dtype)
    c0.send("x", x)
    c1.recv("x")
    s, r = m0.total("control"), m1.total("control")
    assert s.payload_sent == r.payload_received == 15 * x.element_size()
    assert s.frame_sent == r.frame_received > s.payload_sent
    assert (s.messages_sent, r.messages_received) == (1, 1)
    assert (s.payload_received, r.payload_sent, s.messages_received, r.messages_sent) == (0,) * 4


def test_chunked_message_counts_once():
    m0, m1, c0, c1 = pair(max_chunk=16)
    x = torch.arange(100, dtype=torch.int64)             # 800 bytes in 50 frames
    c0.send("big", x)
    assert torch.equal(c1.recv("big"), x)
    s, r = m0.total("control"), m1.total("control")
    assert s.messages_sent == r.messages_received == 1
    assert s.payload_sent == r.payload_received == 800
    assert s.frame_sent == r.frame_received > 800 + 50   # every frame has a header
    assert len(s.rounds) == len(r.rounds) == 1
    c0.send("after", torch.ones(1))                      # step numbers continue past chunks
    assert c1.recv("after").item() == 1


# -- scopes, phases, since, reveals ---------------------------------------------------------

def test_per_scope_counters_and_phase_totals():
    m0, m1, c0, c1 = pair()

    def p0():
        with m0.in_phase("offline"):
            c0.send("pre", torch.zeros(10, dtype=torch.int64))
        with m0.in_phase("online"):
            c0.begin_epoch()
            with m0.in_scope("layer1"):
                with m0.in_scope("attn"):
                    assert m0.scope == "layer1.attn"
                    c0.exchange("a", torch.zeros(2, dtype=torch.int64))
                with m0.in_scope("mlp"):
                    c0.exchange("b", torch.zeros(3, dtype=torch.int64))
            with m0.in_scope("head"):
                c0.exchange("c", torch.zeros(4, dtype=torch.int64))
            assert m0.scope == ""

    def p1():
        c1.recv("pre")
        c1.begin_epoch()
        for tag, n in (("a", 2), ("b", 3), ("c", 4)):
            c1.exchange(tag, torch.zeros(n, dtype=torch.int64))

    run_pair(p0, p1)
    cells = m0.scopes("online")
    assert set(cells) == {"layer1.attn", "layer1.mlp", "head"}
    assert cells["layer1.attn"].payload_sent == cells["layer1.attn"].payload_received == 16
    assert cells["layer1.mlp"].payload_sent == 24 and cells["head"].payload_sent == 32
    assert all(len(c.rounds) == 1 for c in cells.values())
    layer1 = m0.total("online", "layer1")
    assert (layer1.payload_sent, layer1.messages_sent, len(layer1.rounds)) == (40, 2, 2)
    on, off = m0.total("online"), m0.total("offline")
    assert (on.payload_sent, on.payload_received, len(on.rounds)) == (72, 72, 3)
    assert (off.payload_sent, off.payload_received, off.messages_sent) == (80, 0, 1)
    assert set(m0.scopes("offline")) == {""}
    assert m0.total("control").messages_sent == 0
    # the peer never set a phase: all of it is control traffic
    assert m1.total("control").payload_received == 80 + 72
    summary = m0.summary()
    assert summary["online"]["bytes_sent"] == 72 and summary["online"]["rounds"] == 3
    assert summary["offline"]["bytes_sent"] == 80 and summary["offline"]["seconds"] == 0.0


def test_meter_since_counts_only_new_traffic():
    m0, m1, c0, c1 = pair()

    def p0():
        with m0.in_phase("online"):
            c0.exchange("a", torch.zeros(4, dtype=torch.int64))
            snap = m0.snapshot()
            c0.exchange("b", torch.zeros(2, dtype=torch.int64))
            c0.exchange("c", torch.zeros(1, dtype=torch.int64))
            return snap

    def p1():
        for tag, n in (("a", 4), ("b", 2), ("c", 1)):
            c1.exchange(tag, torch.zeros(n, dtype=torch.int64))

    snap, _ = run_pair(p0, p1)
    d = m0.since(snap, "online")
    assert (d.payload_sent, d.payload_received, d.messages_sent, d.messages_received) == \
        (24, 24, 2, 2)
    assert len(d.rounds) == 2
    assert d.frame_sent > 24
    assert m0.since(m0.snapshot(), "online").as_dict() == Counters().as_dict()
    # the snapshot is a copy: later traffic does not change it
    assert sum(c.payload_sent for c in snap.values()) == 32


def test_reveal_log_records_scope_and_phase():
    m = Meter("server")
    with m.in_phase("online"), m.in_scope("layer2"), m.in_scope("softmax"):
        m.reveal("client", "logits", torch.Size([1, 10]), "output")
    with m.in_phase("offline"):
        m.reveal("server", "bucket", (1,), "sequence-length bucket (declared leak)")
    assert m.reveals == [
        Reveal("layer2.softmax", "online", "client", "logits", (1, 10), "output"),
        Reveal("", "offline", "server", "bucket", (1,), "sequence-length bucket (declared leak)"),
    ]
    assert m.total("online").messages_sent == 0   # reveals are a log, not traffic


def test_phases_are_checked_and_restored():
    m = Meter("client")
    with pytest.raises(ValueError, match="unknown phase 'warmup'"):
        with m.in_phase("warmup"):
            pass
    with m.in_phase("offline"):
        with m.in_phase("online"):
            assert m.phase == "online"
        assert m.phase == "offline"
    assert m.phase == "control"
    m.add_seconds("online", 1.5)
    m.add_seconds("online", 0.5)
    assert m.summary()["online"]["seconds"] == 2.0


def test_scope_prefix_matches_whole_scope_names():
    m0, m1, c0, c1 = pair()
    with m0.in_phase("online"):
        with m0.in_scope("layer1"):
            c0.send("a", torch.zeros(1, dtype=torch.int64))
        with m0.in_scope("layer10"):
            c0.send("b", torch.zeros(5, dtype=torch.int64))
    assert m0.total("online", "layer1").payload_sent == 8


def test_scope_seconds_are_exclusive_of_child_scopes():
    now = [0.0]
    m = Meter("client")
    m.clock = lambda: now[0]                   # a fake clock the test advances
    m._mark = 0.0
    with m.in_phase("online"), m.in_scope("layer"):
        now[0] += 0.05
        with m.in_scope("inner"):
            now[0] += 0.1
        now[0] += 0.02
    secs = m.scope_seconds("online")
    assert secs["layer"] == pytest.approx(0.07) and secs["layer.inner"] == pytest.approx(0.1)
    assert "layer" not in m.scope_seconds("offline")
