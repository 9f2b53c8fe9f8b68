"""The comparison-based defaults of ``Ops`` (max, max_last, maxpool2d, argmax, eq,
one_hot, select) run through the mpc family, against TorchOps float64: exact wherever no
truncation is involved, ties included. Split from test_nonlinear.py (the raw protocols)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.spec import ModelSpec
from mpc import fixed
from protocols.config import Config
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import run_family
from tests.mpc.harness import BD40, F_BITS_CMP, FSS40, cid

F_BITS = F_BITS_CMP
ULP = fixed.ulp(F_BITS)


# -- Ops defaults through the family, against TorchOps float64 --------------------------------------
def on_grid(t: torch.Tensor) -> torch.Tensor:
    """Round to the fixed-point grid, so encoding is exact and float64 comparisons are too."""
    return torch.round(t * 2 ** F_BITS) / 2 ** F_BITS


def family_run(tmp_path, forward, inputs, cfg):
    spec = ModelSpec("cmp-test", tuple(inputs[0].shape[1:]), {}, forward, Path("/x"))
    config = Config(compare=cfg)
    outs, cctx, sctx, roles = run_family(get_family("mpc"), spec, {}, inputs, tmp_path, config=config)
    # the plan matches consumption: both stores are empty
    assert [r.store.remaining for r in roles] == [0, 0]
    # only the outputs were revealed, to the client, once per inference
    for ctx in (cctx, sctx):
        assert [(r.to, r.tag, r.what) for r in ctx.meter.reveals] == \
            [("client", "output", "model output")] * len(inputs)
    for r in roles:
        r.close()
    return outs


def cmp_forward(ops, x):
    # x: (B, 12)
    with ops.scope("relu"):
        r = ops.relu(x)
    with ops.scope("abs"):
        a = ops.select(ops.ltz(x), ops.neg(x), x)
    with ops.scope("max"):
        m = ops.max(ops.narrow(x, -1, 0, 6), ops.narrow(x, -1, 6, 6))
    with ops.scope("max5"):
        m5 = ops.max_last(ops.narrow(x, -1, 0, 5))
    with ops.scope("max7"):
        m7 = ops.max_last(ops.narrow(x, -1, 5, 7))
    with ops.scope("argmax"):
        am = ops.argmax(x)
    return ops.cat([r, a, m, m5, m7, am], -1)


def sel_sq_forward(ops, x):
    with ops.scope("selsq"):
        return ops.select(ops.ltz(x), ops.square(x), x)


def cmp_inputs(gen):
    x = on_grid(torch.randn((6, 12), generator=gen, dtype=torch.float64) * 4)
    x[0, 3] = x[0, 9] = x[0].max() + 1.0            # a tie at the maximum
    x[1] = 0.5                                      # all tied
    x[2, 4] = x[2].max() + 1.0
    x[2, 7] = x[2, 4] - ULP                         # 1 ulp below the maximum: not tied
    x[3, 0] = x[3].max() + ULP                      # maximum by one ulp
    x[4, :] = -x[4].abs() - 1                       # all negative
    x[5, 6] = x[5, 11] = x[5, 2] = x[5].max() + 3   # three-way tie
    return x


CMP_CONFIGS = [FSS40, BD40]


@pytest.mark.parametrize("cfg", CMP_CONFIGS, ids=cid)
def test_comparison_ops_exact_against_float64(tmp_path, cfg):
    gen = torch.Generator().manual_seed(90)
    xs = [cmp_inputs(gen), on_grid(torch.randn((6, 12), generator=gen, dtype=torch.float64) * 100)]
    outs = family_run(tmp_path, cmp_forward, xs, cfg)
    for x, got in zip(xs, outs):
        want = cmp_forward(TorchOps({}), x)
        assert torch.equal(got, want), (got - want).abs().max()
        am = got[:, -12:]
        assert torch.equal(am, (x == x.amax(-1, keepdim=True)).to(torch.float64))
    # ties mark every tied position
    am = outs[0][:, -12:]
    assert am[0, 3] == am[0, 9] == 1 and am[1].sum() == 12 and am[5].sum() == 3
    assert am[2].sum() == 1 and am[2, 4] == 1 and am[3].sum() == 1 and am[3, 0] == 1


@pytest.mark.parametrize("cfg", CMP_CONFIGS, ids=cid)
def test_select_with_truncated_branch_within_one_ulp(tmp_path, cfg):
    gen = torch.Generator().manual_seed(91)
    x = on_grid((torch.rand((5, 8), generator=gen, dtype=torch.float64) * 2 - 1) * 30)
    (got,) = family_run(tmp_path, sel_sq_forward, [x], cfg)
    want = sel_sq_forward(TorchOps({}), x)
    neg = x < 0
    assert torch.equal(got[~neg], want[~neg])            # the x branch: exact
    assert (got[neg] - want[neg]).abs().max() <= ULP      # the square: one truncation


def pool_forward(ops, x):
    with ops.scope("pool"):
        return ops.maxpool2d(x, 2)


@pytest.mark.parametrize("cfg", CMP_CONFIGS, ids=cid)
def test_maxpool2d_exact(tmp_path, cfg):
    gen = torch.Generator().manual_seed(92)
    x = on_grid(torch.randn((2, 3, 4, 4), generator=gen, dtype=torch.float64) * 3)
    x[0, 0, :2, :2] = 1.25                            # a window of ties
    (got,) = family_run(tmp_path, pool_forward, [x], cfg)
    assert got.shape == (2, 3, 2, 2)
    assert torch.equal(got, F.max_pool2d(x, 2))
    assert torch.equal(got, pool_forward(TorchOps({}), x))


def eq_forward(ops, x):
    # x: (B, 3); column 0 an integer index in [0, 5), columns 1 and 2 compared
    b = ops.shape(x)[0]
    with ops.scope("onehot"):
        oh = ops.one_hot(ops.reshape(ops.narrow(x, 1, 0, 1), (b,)), 5)
    with ops.scope("eq"):
        e = ops.eq(ops.narrow(x, 1, 1, 1), ops.narrow(x, 1, 2, 1))
    return ops.cat([oh, e], -1)


@pytest.mark.parametrize("cfg", CMP_CONFIGS, ids=cid)
def test_eq_and_one_hot_exact(tmp_path, cfg):
    gen = torch.Generator().manual_seed(93)
    idx = torch.tensor([0, 1, 2, 3, 4, 2, 0, 4], dtype=torch.float64)
    a = on_grid(torch.randn(8, generator=gen, dtype=torch.float64) * 5)
    b = a.clone()
    b[1] = a[1] + ULP                                 # one ulp apart: not equal
    b[2] = a[2] - ULP
    b[3] = -a[3] if a[3] != 0 else 1.0                # sign flip
    b[4] = a[4] + 100.0
    b[6] = 0.0
    a[6] = 0.0                                        # equal zeros
    x = torch.stack([idx, a, b], dim=1)
    (got,) = family_run(tmp_path, eq_forward, [x], cfg)
    want = eq_forward(TorchOps({}), x)
    assert torch.equal(got, want)
    assert torch.equal(got[:, :5], F.one_hot(idx.long(), 5).to(torch.float64))
    assert got[:, 5].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
