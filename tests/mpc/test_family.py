"""The ``mpc`` family end to end (in memory, in-process dealer): accuracy against float64,
pools, exhaustion, the reveal log, exact online traffic, and the server's view.

Accuracy budget: the models here have inputs in [-1, 1], weights of size about
1/sqrt(fan-in) and fan-in at most 16; the only error sources are encoding (half an ulp per
input and weight) and truncation (at most one ulp per truncation, seven on the longest
path). Measured over seeds 0-4 at 16 and 18 fractional bits the output error is at most
3 ulps; ``FAMILY_BUDGET_ULPS`` allows five times that. A truncation that is off by more
than an ulp, or a public term added twice, misses it by orders of magnitude.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.spec import ModelSpec
from mpc import fixed
from protocols.channel import run_pair
from protocols.config import Config, FixedPointConfig
from protocols.families.secret_sharing import plan
from protocols.ops import TorchOps
from protocols.registry import get_family
from protocols.store import MaterialError
from tests.helpers import make_contexts, run_family

FAMILY_BUDGET_ULPS = 16


def mlp_forward(ops, x):
    with ops.scope("fc1"):
        h = ops.linear(x, "fc1")
    with ops.scope("act1"):
        h = ops.square(h)
    with ops.scope("fc2"):
        g = ops.linear(h, "fc2")
    with ops.scope("gate"):
        g = ops.mul(g, ops.add_public(ops.mul_public(g, 0.5), 1.0))
    with ops.scope("norm"):
        b, d = ops.shape(g)
        sq = ops.matmul(ops.reshape(g, (b, 1, d)), ops.reshape(g, (b, d, 1)))   # (b, 1, 1)
        sq = ops.mul_public(ops.reshape(sq, (b, 1)), 0.125)
    with ops.scope("out"):
        return ops.add(ops.add(ops.linear(g, "out"), ops.mean(g, dim=1, keepdim=True)), sq)


def random_mlp(seed: int):
    """A small MLP with random (seeded) sizes and weights; forward written against Ops."""
    gen = torch.Generator().manual_seed(seed)
    d_in, d_h, d_g, d_out = (int(v) for v in torch.randint(3, 17, (4,), generator=gen))
    params = {"fc1.weight": (d_h, d_in), "fc1.bias": (d_h,), "fc2.weight": (d_g, d_h),
              "fc2.bias": (d_g,), "out.weight": (d_out, d_g), "out.bias": (d_out,)}
    spec = ModelSpec(name=f"rand-mlp-{seed}", input_shape=(d_in,), params=params,
                     forward=mlp_forward, weights_file=Path("/nonexistent.safetensors"))
    weights = {k: (torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1) / s[-1] ** 0.5
               for k, s in params.items()}
    return spec, weights, gen


def inputs(spec, gen, n, batch=2):
    return [torch.rand((batch,) + spec.input_shape, generator=gen, dtype=torch.float64) * 2 - 1
            for _ in range(n)]


def config(f):
    return Config(fixed=FixedPointConfig(frac_bits=f))


def item_payload(need) -> int:
    """Bytes each party sends for one item of the plan (mpc.protocol's formulas)."""
    if need.kind == "bilinear":
        n = torch.Size(need.get("a_shape")).numel()
        return 8 * (n if need.get("const") else n + torch.Size(need.get("b_shape")).numel())
    n = torch.Size(need.get("shape")).numel()
    return 8 * (2 * n if need.kind == "mul" else n)


@pytest.mark.parametrize("f", [16, 18])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_mlp_matches_float64_and_uses_the_pool_exactly(tmp_path, seed, f):
    spec, weights, gen = random_mlp(seed)
    xs = inputs(spec, gen, 3)
    family = get_family("mpc")
    outs, cctx, sctx, (client, server) = run_family(family, spec, weights, xs, tmp_path,
                                                    config=config(f))
    ref = TorchOps(weights)
    for x, y in zip(xs, outs):
        want = spec.forward(ref, x)
        assert y.shape == want.shape and y.dtype == torch.float64
        err = (y - want).abs().max().item()
        assert err <= FAMILY_BUDGET_ULPS * fixed.ulp(f), (err, err / fixed.ulp(f))
    # a pool of three inferences consumed all of its items, on both sides
    assert client.store.remaining == 0 and server.store.remaining == 0
    assert client.store.cursor == server.store.cursor == len(client.needs) == 3 * len(
        client.needs.items)
    # one reveal per inference, the output to the client, and nothing else, in both logs
    for meter in (cctx.meter, sctx.meter):
        assert [(r.to, r.tag, r.phase, r.shape) for r in meter.reveals] == \
            [("client", "output", "online", tuple(outs[0].shape))] * 3
    # the weights were opened once, offline: the client received F = W - B for each
    n_w = sum(torch.Size(s).numel() for k, s in spec.params.items() if k.endswith(".weight"))
    assert cctx.meter.total("offline", "weights").payload_received == 8 * n_w
    assert sctx.meter.total("offline", "weights").payload_sent == 8 * n_w
    # exact online traffic: every item is one round of its formula, plus the output reveal
    items = plan(spec, xs[0].shape, config(f)).items
    per_inference = sum(item_payload(n) for n in items)
    out_bytes = 8 * outs[0].numel()
    c, s = cctx.meter.total("online"), sctx.meter.total("online")
    assert c.payload_sent == 3 * per_inference
    assert s.payload_sent == 3 * (per_inference + out_bytes)
    assert c.payload_received == s.payload_sent
    assert len(c.rounds) == len(s.rounds) == 3 * (len(items) + 1)
    client.close(), server.close()
    assert not client.store.dir.exists() and not server.store.dir.exists()


def test_a_fourth_run_on_a_pool_of_three_raises(tmp_path):
    spec, weights, gen = random_mlp(2)
    xs = inputs(spec, gen, 3)
    outs, cctx, sctx, (client, server) = run_family(get_family("mpc"), spec, weights, xs,
                                                    tmp_path)
    assert len(outs) == 3
    with pytest.raises(MaterialError, match="exhausted"):
        run_pair(lambda: client.online(xs[0]), server.online, timeout=30)
    assert len(cctx.meter.reveals) == 3  # nothing more was revealed


def _run_recording(spec, weights, xs, tmp_path, session_id):
    """Like tests.helpers.run_family, but records every tensor the server receives online."""
    family = get_family("mpc")
    cctx, sctx, _ = make_contexts(spec, xs[0].shape, tmp_path, inferences=len(xs),
                                  session_id=session_id)
    received: list[tuple[str, torch.Tensor]] = []
    chan = sctx.channel
    original = chan.recv

    def recv(tag):
        t = original(tag)
        if sctx.meter.phase == "online":
            received.append((tag, t.clone()))
        return t

    chan.recv = recv
    client, server = family.client(cctx), family.server(sctx, weights)

    def run_client():
        client.offline()
        return [client.online(x) for x in xs]

    def run_server():
        server.offline()
        for _ in xs:
            server.online()

    outs, _ = run_pair(run_client, run_server)
    client.close(), server.close()
    return outs, received


def _low_byte_mean(t):
    return (t & 0xFF).to(torch.float64).mean().item()


def test_server_view_of_the_input_is_uniform(tmp_path):
    """Two very different client inputs (all zeros; all near the top of the range): every
    opening the server receives looks uniform (low byte mean 127.5, top bit 1/2) and the two
    are statistically indistinguishable. A light check, not a proof."""
    spec, weights, gen = random_mlp(3)
    batch = 64
    zeros = torch.zeros((batch,) + spec.input_shape, dtype=torch.float64)
    big = torch.full((batch,) + spec.input_shape, 0.9990234375, dtype=torch.float64)
    _, seen0 = _run_recording(spec, weights, [zeros], tmp_path / "a", "va")
    _, seen1 = _run_recording(spec, weights, [big], tmp_path / "b", "vb")
    tags0, tags1 = [t for t, _ in seen0], [t for t, _ in seen1]
    assert tags0 == tags1
    assert all(t.endswith((".open", ".trunc")) for t in tags0), tags0  # masked openings only
    first0, first1 = seen0[0][1], seen1[0][1]
    assert seen0[0][0] == "fc1.open" and first0.shape == zeros.shape
    n = first0.numel()
    sigma = 73.9 / n ** 0.5                     # std of the mean of a uniform byte
    for frames in (seen0, seen1):
        for tag, t in frames:
            if t.numel() < 256:
                continue
            m = _low_byte_mean(t)
            assert abs(m - 127.5) < 5 * 73.9 / t.numel() ** 0.5, (tag, m)
            top = (t < 0).to(torch.float64).mean().item()
            assert abs(top - 0.5) < 5 * 0.5 / t.numel() ** 0.5, (tag, top)
    assert abs(_low_byte_mean(first0) - _low_byte_mean(first1)) < 7 * sigma
    # the plaintext would have been anything but uniform: zero, or one constant value
    assert not torch.equal(first0, torch.zeros_like(first0))
    assert first1.unique().numel() > n // 2
