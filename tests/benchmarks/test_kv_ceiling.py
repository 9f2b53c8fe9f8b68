"""The eviction-ceiling benchmark: its random-weight shapes cost exactly what any weights
cost (the claim that lets it measure shapes nobody trained), the floor is cheaper than the
full cache, and the table computes the ceiling from the records."""

from __future__ import annotations

import torch

from benchmarks import kv_ceiling
from benchmarks.decoding import private_steps, retrieval_prompt
from protocols.config import Config


def _costs(d, heads, ctx, seed, extra):
    spec, weights = kv_ceiling.shape_spec(d, heads, ctx, seed=seed)
    bucket = ctx - 32
    prompt, _ = retrieval_prompt(bucket, seed=ctx)
    cfg = Config().with_overrides(extra)
    _, fig = private_steps(weights, prompt, bucket, 3, cfg, f"ceil{seed}{len(extra)}", spec=spec)
    return fig


def test_random_shape_specs_match_their_parameters():
    spec, weights = kv_ceiling.shape_spec(32, 2, 128, seed=3)
    assert set(weights) == set(spec.params)
    assert all(tuple(weights[k].shape) == tuple(s) for k, s in spec.params.items())
    assert spec.decoder.cfg.ctx == 128 and spec.decoder.cfg.heads == 2
    assert spec.accepts((96, spec.decoder.cfg.vocab + 128))
    other, w2 = kv_ceiling.shape_spec(32, 2, 128, seed=4)
    assert not torch.equal(weights["l0.qkv.weight"], w2["l0.qkv.weight"])


def test_costs_do_not_depend_on_the_weights_and_the_floor_is_cheaper():
    full = [_costs(32, 2, 128, seed, ["kv.method=full"]) for seed in (1, 2)]
    assert full[0]["bytes"] == full[1]["bytes"] > 0
    assert full[0]["rounds"] == full[1]["rounds"]
    assert full[0]["offline_bytes"] == full[1]["offline_bytes"]
    floor = _costs(32, 2, 128, 1, kv_ceiling.FLOOR)
    assert floor["bytes"] < full[0]["bytes"]
    assert floor["offline_bytes"] < full[0]["offline_bytes"]


def _record(role, seconds, rounds, layers=2, heads=4, ctx=1024):
    return {"machine": {"cpu": "test", "cores": 2}, "git": "x",
            "params": {"shape": "s", "context": ctx, "role": role, "layers": layers,
                       "heads": heads},
            "online": {"seconds": seconds, "rounds": rounds, "bytes_both_directions": 10},
            "attention_elements": layers * heads * (ctx - 32)}


def test_the_table_gives_full_over_floor_and_the_two_x_context(tmp_path):
    text = kv_ceiling.write_markdown([_record("full", 0.3, 300), _record("floor", 0.2, 290)],
                                     tmp_path / "c.md")
    row = [line for line in text.splitlines() if line.startswith("| s | 1024")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[9] == "1.50x"
    assert cells[8] == "33%"
    assert cells[12] == "2,048"          # attention 0.1 s at 1024 reaches the floor's 0.2 at 2048
    assert kv_ceiling.write_markdown([_record("full", 0.3, 300)], tmp_path / "d.md").count(
        "| s |") == 0
