"""KV-cache eviction: secret top-k, each policy against a plain reference, the private
selections equal to plaintext's, nothing opened but tokens, and a server view that does
not depend on where the needle is."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.decoding import private_steps
from benchmarks.kv_quality import accuracy
from models import kv_eviction
from models.decoding import plain_decode, prompt_rows
from models.gpt import KVCache, forward
from models.kv_eviction import MPCache, make_policy
from models.kv_select import top_k_onehot
from models.registry import get_model
from models.train_tiny_gpt import CFG, make_task
from protocols.config import Config, ConfigError
from protocols.ops import TorchOps

SPEC = get_model("tiny-gpt")
TORCH = TorchOps({})


@pytest.fixture(scope="module")
def weights():
    return SPEC.load_weights()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=2, max_size=12), st.integers(1, 12))
def test_top_k_onehot_marks_the_k_largest_with_index_tie_break(values, k):
    k = min(k, len(values))
    s = torch.tensor([values], dtype=torch.float64)
    got = top_k_onehot(TORCH, s, k)[0]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    want = torch.zeros(k, len(values), dtype=torch.float64)
    want[torch.arange(k), torch.tensor(order)] = 1
    assert torch.equal(got, want)


def test_kv_config_is_checked():
    for bad in (["kv.method=lru"], ["kv.method=mpcache", "kv.budget=40"],
                ["kv.method=mpcache", "kv.budget=16"], ["kv.method=streamingllm", "kv.sinks=64"],
                ["kv.method=mpcache", "kv.score=cosine"], ["kv.method=h2o", "kv.window=0"]):
        with pytest.raises(ConfigError):
            Config().with_overrides(bad)
    assert Config().with_overrides(["kv.method=mpcache"]).digest() != Config().digest()


def _prefilled(weights, policy, length=224, seed=0):
    toks, _, _ = make_task(1, length, torch.Generator().manual_seed(seed))
    ops = TorchOps(weights, exact=True)
    x, pos, _ = prompt_rows(toks[0].tolist(), length, CFG)
    cache = KVCache(CFG, policy, prompt_len=length)
    forward(ops, x, pos, cache, cfg=CFG)
    cache.finish_prefill(ops)
    return ops, cache


def test_streamingllm_attends_to_sinks_and_recent_rows_only(weights):
    cfg = Config().with_overrides(["kv.method=streamingllm", "kv.budget=64"]).kv
    ops, cache = _prefilled(weights, make_policy(cfg))
    parts = cache.policy.parts(ops, 0, None, cache)
    assert all(p.cached for p in parts)
    assert [p.k.shape[2] for p in parts] == [16, 48]
    assert torch.equal(parts[0].k, cache.k[0][:, :, :16])
    assert torch.equal(parts[1].k, cache.k[0][:, :, 224 - 48:])


@pytest.mark.parametrize("extra", [[], ["kv.coarse=1"]])
def test_mpcache_selection_equals_a_direct_reference(weights, extra):
    """The Ops selection picks the fine clusters a plain torch reference picks: bound
    scores sum_d max(q_d max_d, q_d min_d), top coarse clusters, then top children."""
    cfg = Config().with_overrides(["kv.method=mpcache"] + extra).kv
    ops, cache = _prefilled(weights, make_policy(cfg), length=480, seed=3)
    q = torch.randn(1, 4, 1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sel = cache.policy.select(ops, cache.policy.score(ops, 0, q, cache), cache)[0]   # (H, k, n_f)
    c, co, n_f = cache.policy._layout(480)
    k = cache.k[0][0, :, c:c + n_f * c].reshape(4, n_f, c, 16)
    hi, lo = k.amax(2), k.amin(2)
    bound = torch.maximum(q[0] * hi, q[0] * lo).sum(-1)                                  # (H, n_f)
    for head in range(4):
        if co > 1:
            coarse = torch.maximum(q[0, head] * hi[head].reshape(-1, co, 16).amax(1),
                                   q[0, head] * lo[head].reshape(-1, co, 16).amin(1)).sum(-1)
            kids = (coarse.topk(cfg.coarse_keep).indices.unsqueeze(-1) * co
                    + torch.arange(co)).flatten()
        else:
            kids = torch.arange(n_f)
        want = kids[bound[head, kids].topk(2).indices]
        assert sel[head].argmax(-1).tolist() == want.tolist()
        assert torch.equal(sel[head].sum(-1), torch.ones(2, dtype=sel.dtype))


def test_eviction_quality_in_plaintext(weights):
    """A regression check on the trained decoder (the full figures: benchmarks)."""
    full = accuracy(weights, 256, 40, Config().kv)
    mpc = accuracy(weights, 256, 40, Config().with_overrides(["kv.method=mpcache"]).kv)
    stream = accuracy(weights, 256, 40, Config().with_overrides(
        ["kv.method=streamingllm", "kv.budget=64"]).kv)
    assert mpc >= full - 0.05 and stream < full - 0.2, (full, mpc, stream)


def _record_selections(monkeypatch):
    """Capture each party's share of every MPCache selection (keyed by thread)."""
    seen: dict = {}
    orig = MPCache.select

    def select(self, ops, scores, cache):
        out = orig(self, ops, scores, cache)
        party = getattr(ops, "party", None)
        key = party.index if party is not None else ("plan" if ops.name == "plan" else "plain")
        seen.setdefault(key, []).append(out)
        return out

    monkeypatch.setattr(MPCache, "select", select)
    return seen


def test_private_selections_and_tokens_equal_plaintext(weights, monkeypatch):
    seen = _record_selections(monkeypatch)
    cfg = Config().with_overrides(["kv.method=mpcache"])
    toks, _, _ = make_task(1, 480, torch.Generator().manual_seed(7))
    prompt = toks[0].tolist()
    tokens, fig = private_steps(weights, prompt, 480, 3, cfg, "sel")
    want, _ = plain_decode(weights, prompt, 3, 480, cfg=CFG, policy=make_policy(cfg.kv))
    assert tokens == want
    ring = [a + b for a, b in zip(seen[0], seen[1])]        # shares -> the secret one-hots
    plain = seen["plain"]
    assert len(ring) == len(plain) == 2 * 2                  # 2 steps x 2 layers
    for r, p in zip(ring, plain):
        assert torch.equal(r.to(torch.float64), p), "a private selection differs"
    assert fig["selection_bytes"] > 0 and fig["rounds"] > 0


def test_server_view_does_not_depend_on_the_needle(weights, monkeypatch):
    """No policy opens anything but tokens: two prompts whose needles sit in different
    clusters give the server the same transcript shape (messages, bytes, rounds per
    scope), and every value in it is masked. The attack (guess the needle cluster from
    the server's view) can do no better than chance."""
    from benchmarks import in_process
    views = []
    orig = in_process.run_in_process

    def capture(*a, **k):
        y, cm, sm = orig(*a, **k)
        views.append({s: (c.payload_received, c.messages_received, len(c.rounds))
                      for s, c in sm.scopes("online").items()})
        # the cache fill emits the first token itself: the 2 decode steps reveal one each
        assert [(r.to, r.tag) for r in sm.reveals] == [("client", "token")] * 2
        return y, cm, sm

    monkeypatch.setattr(in_process, "run_in_process", capture)
    cfg = Config().with_overrides(["kv.method=mpcache"])
    for seed in (1, 2):
        toks, _, _ = make_task(1, 224, torch.Generator().manual_seed(seed), pairs=2)
        private_steps(weights, toks[0].tolist(), 224, 3, cfg, f"needle{seed}")
    assert views[0] == views[1]


def test_policies_declare_no_reveals():
    for name, cls in kv_eviction.POLICIES.items():
        assert cls.reveals == (), name
