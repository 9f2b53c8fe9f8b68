"""mpc.protocol on two parties: sharing, linearity, Beaver products (exact in the ring and
accurate in fixed point), and their exact communication.

Accuracy budget (fixed point, values in [-VALUE_BOUND, VALUE_BOUND]): encoding moves each
input by at most half an ulp, so one term x*y of a product moves by at most
|x| ulp/2 + |y| ulp/2 + ulp^2/4 <= (VALUE_BOUND + 1) ulp; truncation adds at most one ulp.
A product with inner dimension k (1 for elementwise) is therefore within
``budget_ulps(k) = (VALUE_BOUND + 1) * k + 1`` ulps of the float64 result. Against the
float64 product of the *encoded* inputs, the only error is truncation's: at most 1 ulp.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc import fixed, protocol
from mpc.ops import MpcOps, conv_need, linear_need, matmul_need
from mpc.protocol import CLIENT, SERVER
from protocols.needs import Need
from tests.mpc.harness import ProtocolPair, TempPair, needs_of, ring_random, split, trunc_need

VALUE_BOUND = 8.0
F_BITS = 16
ULP = fixed.ulp(F_BITS)
HYP = settings(max_examples=30, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])


def budget_ulps(inner: int) -> float:
    """Allowed |mpc - float64| in ulps for a product with inner dimension ``inner``."""
    return (VALUE_BOUND + 1) * inner + 1


def values(shape, gen, bound=VALUE_BOUND):
    """Floats in [-bound, bound] (seeded), with the extremes present when there is room."""
    x = (torch.rand(tuple(shape), generator=gen, dtype=torch.float64) * 2 - 1) * bound
    flat = x.view(-1)
    if flat.numel() >= 2:
        flat[0], flat[-1] = bound, -bound
    return x


def enc(x):
    return fixed.encode(x, F_BITS)


# -- sharing and linearity ---------------------------------------------------------------------
@pytest.mark.parametrize("random_split", [False, True], ids=["x-0", "random"])
def test_share_then_reveal_is_identity(tmp_path, random_split):
    gen = torch.Generator().manual_seed(1)
    x = ring_random((5, 7), gen)
    s = split(x, gen if random_split else None)
    pair = ProtocolPair(needs_of(), tmp_path)
    got = pair.run(lambda p: protocol.reveal_to(p, CLIENT, "out", s[p.index], "test output"))
    assert torch.equal(got[CLIENT], x) and got[SERVER] is None
    # the sender sent exactly its share, one message, one round
    t0, t1 = pair.last_traffic
    assert (t1.payload_sent, t1.messages_sent, len(t1.rounds)) == (x.numel() * 8, 1, 1)
    assert (t0.payload_sent, t0.payload_received) == (0, x.numel() * 8)
    for meter in pair.meters:
        assert [(r.to, r.tag, r.shape, r.phase) for r in meter.reveals] == \
            [("client", "out", (5, 7), "online")]
    # to the server, symmetrically
    got = pair.run(lambda p: protocol.reveal_to(p, SERVER, "back", s[p.index], "declared leak"))
    assert got[CLIENT] is None and torch.equal(got[SERVER], x)
    assert [r.to for r in pair.meters[CLIENT].reveals] == ["client", "server"]
    # open_value: both learn it, one round
    got = pair.run(lambda p: protocol.open_value(p, "open", s[p.index]))
    assert torch.equal(got[0], x) and torch.equal(got[1], x)
    for t in pair.last_traffic:
        assert (t.payload_sent, t.payload_received, len(t.rounds)) == (x.numel() * 8,) * 2 + (1,)
    # masked openings are not reveals
    assert len(pair.meters[SERVER].reveals) == 2


def test_linearity_on_shares(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x, y = ring_random((4, 6), gen), ring_random((4, 6), gen)
    xs, ys = split(x, gen), split(y, gen)
    c = -123457
    sums = [xs[i] + ys[i] for i in range(2)]
    diffs = [xs[i] - ys[i] for i in range(2)]
    scaled = [xs[i] * c for i in range(2)]
    assert torch.equal(sums[0] + sums[1], x + y)
    assert torch.equal(diffs[0] + diffs[1], x - y)
    assert torch.equal(scaled[0] + scaled[1], x * c)
    # and through MpcOps (the local ops must not touch the network)
    fx, fy = values((4, 6), gen), values((4, 6), gen)
    fxs, fys = split(enc(fx), gen), split(enc(fy), gen)
    pair = ProtocolPair(needs_of(), tmp_path)

    def local(p):
        ops = MpcOps(p, {})
        i = p.index
        return (ops.add(fxs[i], fys[i]), ops.sub(fxs[i], fys[i]), ops.neg(fxs[i]),
                ops.mul_public(fxs[i], -3.0), ops.add_public(fxs[i], 2.25),
                ops.sum(fxs[i], dim=1))

    r0, r1 = pair.run(local)
    assert pair.last_traffic[0].messages_sent == pair.last_traffic[1].messages_sent == 0
    ex, ey = fixed.decode(enc(fx), F_BITS), fixed.decode(enc(fy), F_BITS)
    want = (ex + ey, ex - ey, -ex, ex * -3.0, ex + 2.25, ex.sum(dim=1))
    for a, b, w in zip(r0, r1, want):
        assert torch.equal(fixed.decode(a + b, F_BITS), w)


def test_mpcops_fractional_public_ops_against_float(tmp_path):
    gen = torch.Generator().manual_seed(3)
    x = values((3, 8), gen)
    xs = split(enc(x), gen)
    needs = needs_of(trunc_need("root", (3, 8), F_BITS), trunc_need("root", (3, 1), F_BITS))
    pair = ProtocolPair(needs, tmp_path)

    def run(p):
        ops = MpcOps(p, {})
        return ops.mul_public(xs[p.index], 0.3), ops.mean(xs[p.index], dim=1, keepdim=True)

    (a0, m0), (a1, m1) = pair.run(run)
    ex = fixed.decode(enc(x), F_BITS)
    c = fixed.decode(enc(torch.tensor(0.3, dtype=torch.float64)), F_BITS)
    assert (fixed.decode(a0 + a1, F_BITS) - ex * c).abs().max() <= ULP
    inv = fixed.decode(enc(torch.tensor(1 / 8, dtype=torch.float64)), F_BITS)
    assert (fixed.decode(m0 + m1, F_BITS) - ex.sum(1, keepdim=True) * inv).abs().max() <= ULP
    assert all(s.remaining == 0 for s in pair.stores)


# -- products: exact in the ring -------------------------------------------------------------
def test_beaver_products_exact_in_the_ring(tmp_path):
    """Beaver products are exact over Z_2^64 for arbitrary ring elements (wrapping)."""
    gen = torch.Generator().manual_seed(4)
    m, k, n = 3, 5, 4
    x, y = ring_random((m, k), gen), ring_random((m, k), gen)
    a, b = ring_random((m, k), gen), ring_random((k, n), gen)
    xs, ys, as_, bs = split(x, gen), split(y, gen), split(a, gen), split(b, gen)
    mneed, _ = matmul_need("mm", (m, k), (k, n))
    needs = needs_of(Need.make("mul", "mul", shape=(m, k)), Need.make("square", "sq", shape=(m, k)),
                     mneed)
    pair = ProtocolPair(needs, tmp_path)

    def run(p):
        i = p.index
        return (protocol.mul(p, xs[i], ys[i], "mul"), protocol.square(p, xs[i], "sq"),
                protocol.bilinear_shared(p, as_[i], bs[i], mneed, "mm"))

    r0, r1 = pair.run(run)
    assert torch.equal(r0[0] + r1[0], x * y)
    assert torch.equal(r0[1] + r1[1], x * x)
    assert torch.equal(r0[2] + r1[2], a @ b)
    # neither share alone is the result
    assert not torch.equal(r0[0], x * y) and not torch.equal(r1[0], x * y)


def test_broadcast_product_opens_the_small_operand_once(tmp_path):
    """X (m, k) times a per-row Y (m, 1): exact in the ring, and Y - B is opened with B of
    Y's own shape, so each party sends (m k + m) elements instead of 2 m k."""
    gen = torch.Generator().manual_seed(6)
    m, k = 3, 5
    x, y = ring_random((m, k), gen), ring_random((m, 1), gen)
    xs, ys = split(x, gen), split(y, gen)
    need = protocol.mul_need("bmul", (m, k), (m, 1))
    assert need.get("b_shape") == (m, 1)
    assert protocol.mul_need("s", (m, k), (m, k)).get("b_shape", None) is None
    pair = ProtocolPair(needs_of(need), tmp_path)
    r0, r1 = pair.run(lambda p: protocol.mul(p, xs[p.index], ys[p.index], "bmul"))
    assert torch.equal(r0 + r1, x * y)
    for meter in pair.meters:
        assert meter.total("online").payload_sent == (m * k + m) * 8


def test_products_with_a_server_weight_exact_in_the_ring(tmp_path):
    gen = torch.Generator().manual_seed(5)
    x = ring_random((3, 6), gen)
    w = ring_random((4, 6), gen)
    img = ring_random((2, 3, 5, 5), gen)
    kern = ring_random((4, 3, 3, 3), gen)
    lneed, _ = linear_need("fc", x.shape, w.shape, "fc")
    cneed, _ = conv_need("cv", img.shape, kern.shape, "cv", 2, 1)
    needs = needs_of(lneed, cneed, constants=(("cv.weight", tuple(kern.shape)),
                                              ("fc.weight", tuple(w.shape))))
    pair = ProtocolPair(needs, tmp_path)
    fw, fk = pair.masked_weight("fc.weight", w), pair.masked_weight("cv.weight", kern)
    assert not torch.equal(fw, w)
    xs, imgs = split(x, gen), split(img, gen)

    def run(p):
        i = p.index
        weight = (w, kern) if i == SERVER else (None, None)  # the client never holds W
        return (protocol.bilinear_with_weight(p, xs[i], lneed, weight[0], fw, "fc"),
                protocol.bilinear_with_weight(p, imgs[i], cneed, weight[1], fk, "cv"))

    r0, r1 = pair.run(run)
    assert torch.equal(r0[0] + r1[0], x @ w.T)
    assert torch.equal(r0[1] + r1[1], F.conv2d(img, kern, stride=2, padding=1))


# -- products: fixed point against float64 (property tests) ----------------------------------
def _check_fixed(got_shares, want_float, enc_ref, inner):
    got = fixed.decode(got_shares[0] + got_shares[1], F_BITS)
    # against the exact product of the encoded inputs: truncation's error only
    assert (got - enc_ref).abs().max().item() <= ULP
    # against float64 on the raw inputs: the stated budget
    assert (got - want_float).abs().max().item() <= budget_ulps(inner) * ULP


@HYP
@given(m=st.integers(1, 5), k=st.integers(1, 6), n=st.integers(1, 5), seed=st.integers(0, 2**31),
       random_split=st.booleans())
def test_elementwise_and_matmul_of_shares_against_float64(m, k, n, seed, random_split):
    gen = torch.Generator().manual_seed(seed)
    x, y, z = values((m, k), gen), values((m, k), gen), values((k, n), gen)
    sgen = gen if random_split else None
    xs, ys, zs = split(enc(x), sgen), split(enc(y), sgen), split(enc(z), sgen)
    mneed, out = matmul_need("mm", (m, k), (k, n))
    needs = needs_of(Need.make("mul", "mul", shape=(m, k)), trunc_need("mul", (m, k), F_BITS),
                     Need.make("square", "sq", shape=(m, k)), trunc_need("sq", (m, k), F_BITS),
                     mneed, trunc_need("mm", out, F_BITS))
    with TempPair(needs, frac_bits=F_BITS) as pair:
        def run(p):
            i = p.index
            a = protocol.truncate(p, protocol.mul(p, xs[i], ys[i], "mul"), "mul")
            b = protocol.truncate(p, protocol.square(p, xs[i], "sq"), "sq")
            c = protocol.truncate(p, protocol.bilinear_shared(p, xs[i], zs[i], mneed, "mm"), "mm")
            return a, b, c

        r0, r1 = pair.run(run)
    ex, ey, ez = (fixed.decode(enc(t), F_BITS) for t in (x, y, z))
    _check_fixed((r0[0], r1[0]), x * y, ex * ey, 1)
    _check_fixed((r0[1], r1[1]), x * x, ex * ex, 1)
    _check_fixed((r0[2], r1[2]), x @ z, ex @ ez, k)


@HYP
@given(m=st.integers(1, 4), k=st.integers(1, 8), n=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_linear_with_server_weight_against_float64(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x, w = values((m, k), gen), values((n, k), gen)
    lneed, out = linear_need("fc", (m, k), (n, k), "fc")
    needs = needs_of(lneed, trunc_need("fc", out, F_BITS), constants=(("fc.weight", (n, k)),))
    xs = split(enc(x), gen)
    with TempPair(needs, frac_bits=F_BITS) as pair:
        fw = pair.masked_weight("fc.weight", enc(w))

        def run(p):
            wt = enc(w) if p.index == SERVER else None
            z = protocol.bilinear_with_weight(p, xs[p.index], lneed, wt, fw, "fc")
            return protocol.truncate(p, z, "fc")

        r = pair.run(run)
    ex, ew = fixed.decode(enc(x), F_BITS), fixed.decode(enc(w), F_BITS)
    _check_fixed(r, x @ w.T, ex @ ew.T, k)


@HYP
@given(b=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(3, 6),
       wd=st.integers(3, 6), kh=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 1), seed=st.integers(0, 2**31))
def test_conv2d_with_server_weight_against_float64(b, c, o, h, wd, kh, stride, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    x, w = values((b, c, h, wd), gen), values((o, c, kh, kh), gen)
    cneed, out = conv_need("cv", x.shape, w.shape, "cv", stride, padding)
    needs = needs_of(cneed, trunc_need("cv", out, F_BITS), constants=(("cv.weight", w.shape),))
    xs = split(enc(x), gen)
    with TempPair(needs, frac_bits=F_BITS) as pair:
        fw = pair.masked_weight("cv.weight", enc(w))

        def run(p):
            wt = enc(w) if p.index == SERVER else None
            z = protocol.bilinear_with_weight(p, xs[p.index], cneed, wt, fw, "cv")
            return protocol.truncate(p, z, "cv")

        r = pair.run(run)
    ex, ew = fixed.decode(enc(x), F_BITS), fixed.decode(enc(w), F_BITS)
    _check_fixed(r, F.conv2d(x, w, stride=stride, padding=padding),
                 F.conv2d(ex, ew, stride=stride, padding=padding), c * kh * kh)


# -- communication: exact bytes and rounds ---------------------------------------------------
M, K, N = 3, 5, 4
CONV_X, CONV_W = (2, 3, 6, 6), (4, 3, 3, 3)


def _comm_case(name, gen):
    """(needs, party function, payload bytes each party sends) for one protocol call."""
    x, y = ring_random((M, K), gen), ring_random((M, K), gen)
    xs, ys = split(x, gen), split(y, gen)
    if name == "mul":
        return (needs_of(Need.make("mul", "s", shape=(M, K))),
                lambda p, pair: protocol.mul(p, xs[p.index], ys[p.index], "s"), 2 * M * K * 8)
    if name == "square":
        return (needs_of(Need.make("square", "s", shape=(M, K))),
                lambda p, pair: protocol.square(p, xs[p.index], "s"), M * K * 8)
    if name == "truncate":
        return (needs_of(trunc_need("s", (M, K), F_BITS)),
                lambda p, pair: protocol.truncate(p, xs[p.index], "s"), M * K * 8)
    if name == "matmul-shared":
        need, _ = matmul_need("s", (M, K), (K, N))
        zs = split(ring_random((K, N), gen), gen)
        return (needs_of(need),
                lambda p, pair: protocol.bilinear_shared(p, xs[p.index], zs[p.index], need, "s"),
                (M * K + K * N) * 8)
    if name == "linear-weight":
        need, _ = linear_need("s", (M, K), (N, K), "fc")
        w = ring_random((N, K), gen)
        return (needs_of(need, constants=(("fc.weight", (N, K)),)),
                lambda p, pair: protocol.bilinear_with_weight(
                    p, xs[p.index], need, w if p.index else None,
                    pair.masked_weight("fc.weight", w), "s"),
                M * K * 8)
    if name == "conv2d-weight":
        need, _ = conv_need("s", CONV_X, CONV_W, "cv", 1, 1)
        imgs = split(ring_random(CONV_X, gen), gen)
        w = ring_random(CONV_W, gen)
        return (needs_of(need, constants=(("cv.weight", CONV_W),)),
                lambda p, pair: protocol.bilinear_with_weight(
                    p, imgs[p.index], need, w if p.index else None,
                    pair.masked_weight("cv.weight", w), "s"),
                torch.Size(CONV_X).numel() * 8)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["mul", "square", "truncate", "matmul-shared",
                                  "linear-weight", "conv2d-weight"])
def test_one_round_and_exact_payload(tmp_path, name):
    gen = torch.Generator().manual_seed(6)
    needs, fn, per_party = _comm_case(name, gen)
    pair = ProtocolPair(needs, tmp_path)
    def scoped(p):
        with p.channel.meter.in_scope("layer"):
            return fn(p, pair)

    pair.run(scoped)
    for i, meter in enumerate(pair.meters):
        total = meter.total("online")
        # everything was counted under the scope, and the scope agrees with the phase total
        assert set(meter.scopes("online")) == {"layer"}
        assert meter.total("online", "layer").as_dict() == total.as_dict()
        assert len(total.rounds) == 1, (name, i, total.rounds)
        assert total.payload_sent == per_party, (name, i)
        assert total.payload_received == per_party, (name, i)
        assert total.messages_sent == total.messages_received == 1
        assert meter.reveals == []  # masked openings are not reveals
    assert all(s.remaining == 0 for s in pair.stores)


def test_dependent_steps_take_one_round_each(tmp_path):
    """mul -> truncate -> square -> truncate: four dependent openings, four rounds."""
    gen = torch.Generator().manual_seed(7)
    x = enc(values((2, 3), gen))
    xs = split(x, gen)
    needs = needs_of(Need.make("mul", "a", shape=(2, 3)), trunc_need("a", (2, 3), F_BITS),
                     Need.make("square", "b", shape=(2, 3)), trunc_need("b", (2, 3), F_BITS))
    pair = ProtocolPair(needs, tmp_path)

    def run(p):
        t = protocol.truncate(p, protocol.mul(p, xs[p.index], xs[p.index], "a"), "a")
        return protocol.truncate(p, protocol.square(p, t, "b"), "b")

    pair.run(run)
    for t in pair.last_traffic:
        assert len(t.rounds) == 4
        assert t.payload_sent == (2 * 6 + 6 + 6 + 6) * 8
