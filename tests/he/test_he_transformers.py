"""Transformers under ``he`` and ``hybrid``: linear layers with server weights under HE,
LayerNorm weights and the word-embedding lookup as under ``mpc``, attention and GeLU in
2PC; outputs agree with plaintext as under ``mpc``."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from models.minilm import MINILM
from protocols.config import Config
from protocols.families.he_family import he_plan
from protocols.families.hybrid import HybridPlanOps
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import run_family
from tests.models.test_bert import TINY, one_hot, tiny_spec, tiny_weights


@pytest.mark.parametrize("protocol", ["he", "hybrid"])
def test_tiny_bert_matches_plaintext(tmp_path, protocol):
    spec, w = tiny_spec(), tiny_weights()
    xs = [one_hot([1, 5, 7, 2, 9], 8, TINY.vocab)]
    outs, cctx, sctx, (client, server) = run_family(get_family(protocol), spec, w, xs, tmp_path)
    ref = spec.forward(TorchOps(w, exact=True), xs[0])
    assert F.cosine_similarity(outs[0], ref).item() >= 0.999
    assert client.store.remaining == 0 and server.store.remaining == 0
    assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("client", "output")]
    assert sctx.meter.reveals == cctx.meter.reveals
    # LayerNorm weights went the 2PC way: opened once under constant-operand masks
    assert {k for k, _ in client.needs.constants} == {k for k in w if k.endswith("ln1.weight")
                                                      or k.endswith("ln2.weight")
                                                      or k == "embed_ln.weight"}


@pytest.mark.parametrize("protocol", ["he", "hybrid"])
def test_minilm_routes_the_embedding_lookup_and_layernorm_to_2pc(protocol):
    ops_class = HybridPlanOps if protocol == "hybrid" else None
    needs, layers = he_plan(MINILM, (1, 32, MINILM.input_shape[1]), Config(), 1, ops_class,
                            protocol)
    assert "embed" not in layers
    assert {f"l{i}.{n}" for i in range(6) for n in ("qkv", "o", "ff1", "ff2")} == set(layers)
    assert all(info["rows"] == 32 for info in layers.values())
    constants = {k for k, _ in needs.constants}
    assert "embed.weight" in constants and "l0.ln1.weight" in constants
    assert not any(k.startswith("l0.qkv") for k in constants)
    if protocol == "hybrid":   # one truncation by f + 16 bits per HE-masked layer
        lifted = [n for n in needs.items if n.kind == "trunc" and n.get("frac_bits") == 32]
        assert len(lifted) == len(layers)


def test_rows_beyond_one_ciphertext_are_split(tmp_path):
    """Three rows of a 700-wide layer: two ciphertexts (two rows fit one), exact shares."""
    from types import SimpleNamespace

    import torch

    from he.keys import ClientKeys, ServerKeys
    from he.layer import BlockMatrix, client_linear, geometry, server_linear
    from he.matvec import rotation_steps
    from he.params import get_param_set
    from protocols.channel import memory_pair, run_pair
    from protocols.metering import Meter
    ps = get_param_set("n8192-d2")
    plan = geometry((700, 700), 3, ps.slots)
    assert plan.per_ct == 2 and plan.d == 700
    ck = ClientKeys.generate(ps, rotation_steps(plan.d, plan.b))
    sk = ServerKeys.from_bundle(ck.public_bundle(), (ps.name,))
    g = torch.Generator().manual_seed(0)
    w = torch.randn((700, 700), generator=g, dtype=torch.float64) * 0.05
    x = torch.randn((3, 700), generator=g, dtype=torch.float64)
    mat = BlockMatrix(w.numpy(), plan, ps, sk.context)
    xr = torch.round(x * 2 ** 16).to(torch.int64)
    x_s = torch.randint(-2 ** 40, 2 ** 40, xr.shape, generator=g)
    meters = (Meter("client"), Meter("server"))
    chans = memory_pair(meters)
    party = [SimpleNamespace(frac_bits=16, channel=c) for c in chans]
    y_c, y_s = run_pair(lambda: client_linear(party[0], ck, xr - x_s, (700, 700), "t"),
                        lambda: server_linear(party[1], sk, x_s, mat, None, "t"))
    y = (y_c + y_s).to(torch.float64) / 2 ** 16
    assert float((y - x @ w.t()).abs().max()) < 1e-3
    assert meters[0].total("control").messages_sent == 2      # two input ciphertexts
    assert meters[1].total("control").messages_sent == 3      # masked rows + two replies


def test_wide_layers_are_cut_into_square_blocks(tmp_path):
    """MiniLM's QKV (1152 x 384) as three 384-blocks: 5 rows per ciphertext instead of 1;
    a 300 x 1000 layer (blocks and padding at both edges) stays exact."""
    from types import SimpleNamespace

    import torch

    from he.keys import ClientKeys, ServerKeys
    from he.layer import BlockMatrix, client_linear, geometry, server_linear
    from he.matvec import rotation_steps
    from he.params import get_param_set
    from protocols.channel import memory_pair, run_pair
    from protocols.metering import Meter
    ps = get_param_set("n8192-d2")
    qkv = geometry((1152, 384), 32, ps.slots)
    assert (qkv.d, qkv.per_ct, qkv.row_blocks, qkv.col_blocks) == (384, 5, 3, 1)
    plan = geometry((300, 1000), 6, ps.slots)
    assert plan.d < 1000 and plan.col_blocks > 1
    ck = ClientKeys.generate(ps, rotation_steps(plan.d, plan.b))
    sk = ServerKeys.from_bundle(ck.public_bundle(), (ps.name,))
    g = torch.Generator().manual_seed(1)
    w = torch.randn((300, 1000), generator=g, dtype=torch.float64) * 0.03
    x = torch.randn((6, 1000), generator=g, dtype=torch.float64)
    xr = torch.round(x * 2 ** 16).to(torch.int64)
    x_s = torch.randint(-2 ** 40, 2 ** 40, xr.shape, generator=g)
    chans = memory_pair((Meter("client"), Meter("server")))
    party = [SimpleNamespace(frac_bits=16, channel=c) for c in chans]
    mat = BlockMatrix(w.numpy(), plan, ps, sk.context)
    y_c, y_s = run_pair(lambda: client_linear(party[0], ck, xr - x_s, (300, 1000), "t"),
                        lambda: server_linear(party[1], sk, x_s, mat, None, "t"))
    y = (y_c + y_s).to(torch.float64) / 2 ** 16
    assert float((y - x @ w.t()).abs().max()) < 1e-3
