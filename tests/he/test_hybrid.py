"""``hybrid`` (Delphi-style, BFV masks): exact lifted products, perfect masking both ways,
circuit privacy against the noise attack, use-once masks, and the digits models end to
end with exactly planned online bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal.sealapi as sa
import torch

from he import coeff_matmul as cm
from he import delphi
from he.bfv import (FLOOD_BITS, LIFT, SIGMA_MIN, BfvClientKeys, BfvParams, BfvServerKeys,
                    get_bfv_params, noise_bound_bits)
from he.keys import HeContextError
from he.params import HeParamError
from models.digits import as_model_input, load_split
from models.registry import get_model
from mpc import prg
from protocols.ops import TorchOps
from protocols.registry import get_family
from protocols.store import MaterialError
from tests.helpers import planned_online_bytes, run_family

PS = get_bfv_params("bfv-n8192-t48")


@pytest.fixture(scope="module")
def keys():
    ck = BfvClientKeys.generate(PS)
    return ck, BfvServerKeys.from_bundle(ck.public_bundle(), (PS.name,))


def _layer(sk, w, tokens):
    geom = cm.choose_geometry(tokens, w.shape[1], w.shape[0], PS.poly_modulus_degree)
    return delphi.ServerLayer(sk, geom, w, None, "test")


@pytest.mark.parametrize("tokens,n,m", [(1, 64, 10), (3, 40, 24), (5, 200, 33)])
def test_shares_of_the_lifted_product_are_exact_in_the_ring(keys, tokens, n, m):
    ck, sk = keys
    g = torch.Generator().manual_seed(tokens)
    w = torch.randint(-2 ** 17, 2 ** 17, (m, n), generator=g)
    x = torch.randint(-2 ** 22, 2 ** 22, (tokens, n), generator=g)
    x_s = torch.randint(-2 ** 62, 2 ** 62, (tokens, n), generator=g)    # uniform-ish share
    x_c = x - x_s
    layer = _layer(sk, w, tokens)
    r = delphi.client_mask(prg.new_seed(), 0, (tokens, n))
    replies, s_share = delphi.server_replies(sk, layer, delphi.client_inputs(ck, layer.geom, r))
    c = delphi.client_shares(ck, layer.geom, replies)
    total = c + delphi.server_online(layer, x_c - r, x_s, s_share)
    assert torch.equal(total, (x @ w.t()) << LIFT)                     # exact, no wrap bit


def test_every_coefficient_of_a_reply_is_masked(keys):
    """The client's decryption is uniform mod t everywhere, partial sums included."""
    ck, sk = keys
    w = torch.full((4, 8), 3, dtype=torch.int64)
    layer = _layer(sk, w, 1)
    r = torch.ones((1, 8), dtype=torch.int64)
    replies, _ = delphi.server_replies(sk, layer, delphi.client_inputs(ck, layer.geom, r))
    z = ck.decrypt(replies[0], np.arange(PS.poly_modulus_degree)).astype(np.float64) / PS.t
    # unmasked, nearly every coefficient would be 0 or a small partial sum
    assert abs(z.mean() - 0.5) < 0.02 and abs(z.var() - 1 / 12) < 0.01
    assert (z < 1e-6).sum() < 5


def test_the_server_sees_uniform_masked_inputs():
    """u = x - r with r from the client's AES-CTR stream: balanced bits whatever x is."""
    x = torch.zeros((64, 64), dtype=torch.int64)
    u = x - delphi.client_mask(prg.new_seed(), 3, x.shape)
    bits = torch.stack([(u >> k) & 1 for k in range(64)]).float().mean(dim=(1, 2))
    assert float((bits - 0.5).abs().max()) < 0.03


def _noise_budgets(keys, w, r, flood_bits, n=6, switch=True):
    ck, sk = keys
    layer = _layer(sk, w, 1)
    out = []
    for _ in range(n):
        prods = cm.multiply(sk, delphi.client_inputs(ck, layer.geom, r), layer.encoded)
        out.append(ck.noise_budget(sk.finish_for_client(prods[0], sk.uniform_mask(), flood_bits,
                                                            switch)))
    return out


def test_circuit_privacy_against_the_noise_attack(keys):
    """W1 and W2 give the same W r; unflooded, the client tells them apart from the noise
    budget of the reply alone; flooded, the budgets are the same."""
    r = torch.tensor([[0, 5, 7, 1]], dtype=torch.int64)           # r_0 = 0: column 0 is free
    w1 = torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]], dtype=torch.int64)
    w2 = w1.clone()
    w2[:, 0] = 2 ** 36                                            # same W r, far larger W
    raw1, raw2 = _noise_budgets(keys, w1, r, 0, switch=False), _noise_budgets(keys, w2, r, 0,
                                                                            switch=False)
    assert min(raw1) > max(raw2) + 20                             # the attack works unflooded
    fl1, fl2 = _noise_budgets(keys, w1, r, FLOOD_BITS), _noise_budgets(keys, w2, r, FLOOD_BITS)
    assert max(fl1 + fl2) - min(fl1 + fl2) <= 1                  # the flood sets the noise
    at_top = [_noise_budgets(keys, w, r, FLOOD_BITS, switch=False) for w in (w1, w2)]
    assert max(sum(at_top, [])) - min(sum(at_top, [])) <= 1       # before the switch too


def test_the_declared_noise_bound_holds_and_sets_the_margin(keys):
    ck, sk = keys
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-2 ** 17, 2 ** 17, (64, 64), generator=g)
    layer = _layer(sk, w, 1)
    r = delphi.client_mask(prg.new_seed(), 0, (1, 64))
    prod = cm.multiply(sk, delphi.client_inputs(ck, layer.geom, r), layer.encoded)[0]
    measured_noise_bits = PS.delta_bits - ck.noise_budget(prod)
    bound = noise_bound_bits(2 ** 17, layer.geom.m_b * layer.geom.n_b * layer.geom.in_blocks)
    assert measured_noise_bits <= bound
    assert layer.sigma == FLOOD_BITS - bound >= SIGMA_MIN
    with pytest.raises(HeParamError, match="flood margin"):
        _layer(sk, torch.full((8, 8), 2 ** 46, dtype=torch.int64), 1)


def test_bfv_parameter_checks_name_the_problem():
    with pytest.raises(HeParamError, match="exceed the 128-bit limit of 218"):
        BfvParams("wide", 8192, PS.data_primes + (PS.data_primes[0] + 2 ** 49,),
                  PS.special_prime).check()
    other = sa.CoeffModulus.Create(8192, [40])[0].value()           # = 1 mod 2N, not mod t
    with pytest.raises(HeParamError, match="1 mod t"):
        BfvParams("wrap", 8192, PS.data_primes[:2] + (other,), PS.special_prime).check()
    with pytest.raises(HeParamError, match="unknown BFV parameter set"):
        get_bfv_params("bfv-n4096")


def test_the_server_gets_a_public_key_only_and_checks_it(keys):
    ck, sk = keys
    assert not hasattr(sk, "secret_key")
    bundle = ck.public_bundle()
    with pytest.raises(HeContextError, match="not allowed"):
        BfvServerKeys.from_bundle({**bundle, "params": "n8192-d2"}, (PS.name,))
    with pytest.raises(HeContextError, match="unexpected fields"):
        BfvServerKeys.from_bundle({**bundle, "secret_key": b"x"}, (PS.name,))
    with pytest.raises(HeContextError, match="malformed public key"):
        BfvServerKeys.from_bundle({**bundle, "public_key": b"\x00" * 64}, (PS.name,))


@pytest.mark.parametrize("model", ["digits-mlp", "digits-cnn-relu"])
def test_hybrid_matches_plaintext_with_planned_online_bytes(model, tmp_path):
    spec = get_model(model)
    w = spec.load_weights()
    _, x_test, _, _ = load_split()
    xs = [as_model_input(spec, x_test[i:i + 1]) for i in (0, 17)]
    outs, cctx, sctx, (client, server) = run_family(get_family("hybrid"), spec, w, xs, tmp_path)
    for x, y in zip(xs, outs):
        ref = spec.forward(TorchOps(w, exact=True), x)
        assert float((y - ref).abs().max()) < 0.01
        assert int(y.argmax()) == int(ref.argmax())
    assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("client", "output")] * len(xs)
    assert client.store.remaining == 0 and server.store.remaining == 0
    assert client.pool == {} and server.pool == {}
    # no Beaver material for the layers with server weights: only truncations etc.
    assert not [n for n in client.needs.items if n.kind == "bilinear" and n.get("const")]
    # online: each party sends what the plan says, plus the client's masked vectors
    masked = sum(8 * info["rows"] * info["matrix"][1] for info in client.layers.values())
    planned = planned_online_bytes(client.needs)
    assert cctx.meter.total("online").payload_sent == len(xs) * (planned + masked)
    out_bytes = 8 * math.prod(outs[0].shape)
    assert sctx.meter.total("online").payload_sent == len(xs) * (planned + out_bytes)
    assert min(info.sigma for info in server.encoded.values()) >= SIGMA_MIN
    assert client.storage_bytes() < client.peak_storage_bytes()      # shares were used up


def test_masks_serve_one_inference(tmp_path):
    spec = get_model("digits-mlp")
    _, x_test, _, _ = load_split()
    x = as_model_input(spec, x_test[:1])
    _, _, _, (client, _) = run_family(get_family("hybrid"), spec, spec.load_weights(), [x],
                                      tmp_path)
    with pytest.raises(MaterialError, match="no offline masks for inference 2"):
        client._masks_for(1)
    with pytest.raises(MaterialError, match="no offline masks for inference 1"):
        client._masks_for(0)                                         # already spent
