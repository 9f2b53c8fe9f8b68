"""BERT-family encoder: the MiniLM importer against an independent implementation, length
buckets and masking, and private inference on a tiny configuration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.bert import BertConfig, bert_arch, bert_params, make_forward
from models.minilm import MINILM, Tokenizer, load_weights, package_dir
from models.spec import ModelSpec
from protocols.config import Config
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import run_family

SENTENCES = ["A man is playing a guitar.",
             "Private inference keeps both the input and the model secret across the network.",
             "ok"]


def hf_reference(state, ids, cfg):
    """HF BERT + mean pooling + normalisation, written directly from the formulas."""
    g = {k: v.double() for k, v in state.items()}
    t, d, h = len(ids), cfg.d, cfg.heads
    x = g["embeddings.word_embeddings.weight"][ids] + g["embeddings.position_embeddings.weight"][:t] \
        + g["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (d,), g["embeddings.LayerNorm.weight"], g["embeddings.LayerNorm.bias"], 1e-12)
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        q, k, v = (x @ g[p + f"attention.self.{n}.weight"].T + g[p + f"attention.self.{n}.bias"]
                   for n in ("query", "key", "value"))
        q, k, v = (z.reshape(t, h, d // h).transpose(0, 1) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // h), -1) @ v
        a = a.transpose(0, 1).reshape(t, d) @ g[p + "attention.output.dense.weight"].T \
            + g[p + "attention.output.dense.bias"]
        x = F.layer_norm(x + a, (d,), g[p + "attention.output.LayerNorm.weight"],
                         g[p + "attention.output.LayerNorm.bias"], 1e-12)
        f = F.gelu(x @ g[p + "intermediate.dense.weight"].T + g[p + "intermediate.dense.bias"])
        f = f @ g[p + "output.dense.weight"].T + g[p + "output.dense.bias"]
        x = F.layer_norm(x + f, (d,), g[p + "output.LayerNorm.weight"],
                         g[p + "output.LayerNorm.bias"], 1e-12)
    m = x.mean(0)
    return m / m.norm()


@pytest.fixture(scope="module")
def minilm():
    from safetensors.torch import load_file
    return load_weights(), load_file(str(package_dir() / "model.safetensors")), Tokenizer()


def test_minilm_plaintext_matches_an_independent_implementation(minilm):
    weights, state, tok = minilm
    ops = TorchOps(weights, exact=True)
    for s in SENTENCES:
        got = MINILM.forward(ops, tok.one_hot(s))[0]
        want = hf_reference(state, tok.ids(s), MINILM_CFG)
        assert torch.dot(got, want).item() >= 0.99999, s


def test_padding_to_a_larger_bucket_changes_nothing(minilm):
    weights, _, tok = minilm
    ops = TorchOps(weights, exact=True)
    a = MINILM.forward(ops, tok.one_hot(SENTENCES[0], 16))
    b = MINILM.forward(ops, tok.one_hot(SENTENCES[0], 64))
    assert (a - b).abs().max().item() < 1e-9


def test_approximations_in_float_stay_close(minilm):
    weights, _, tok = minilm
    for s in SENTENCES:
        exact = MINILM.forward(TorchOps(weights, exact=True), tok.one_hot(s))
        approx = MINILM.forward(TorchOps(weights), tok.one_hot(s))
        assert F.cosine_similarity(exact, approx).item() >= 0.999


def test_tokenizer_buckets_and_errors(minilm):
    _, _, tok = minilm
    text = SENTENCES[1] + " It pads to the smallest bucket that fits."
    x = tok.one_hot(text)
    n = len(tok.ids(text))
    assert 16 < n <= 32 and x.shape == (1, 32, 30522)
    assert x[0, :n].sum().item() == n and x[0, n:].abs().sum().item() == 0
    assert tok.one_hot(SENTENCES[0]).shape == (1, 16, 30522)
    with pytest.raises(ValueError, match="bucket 16 cannot hold"):
        tok.one_hot(" ".join(["word"] * 40), 16)
    with pytest.raises(ValueError, match="empty"):
        tok.one_hot("   ")
    assert MINILM.accepts((64, 30522)) and not MINILM.accepts((20, 30522))


MINILM_CFG = BertConfig()
TINY = BertConfig(vocab=40, d=16, layers=2, heads=2, ffn=32, max_pos=32)


def tiny_spec():
    return ModelSpec("tiny-bert", (16, TINY.vocab), bert_params(TINY), make_forward(TINY),
                     Path("/nonexistent"), task="embedding", seq_buckets=(8, 16),
                     notes={"ee": bert_arch(TINY)})


def tiny_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.3
         for k, s in bert_params(TINY).items()}
    for k in w:
        if k.endswith("ln1.weight") or k.endswith("ln2.weight") or k == "embed_ln.weight":
            w[k] = 1 + 0.1 * w[k]
    return w


def one_hot(ids, t, vocab):
    x = torch.zeros((1, t, vocab), dtype=torch.float64)
    x[0, torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return x


@pytest.mark.parametrize("method", ["fss", "bitdecomp"])
def test_private_tiny_bert_matches_plaintext(tmp_path, method):
    spec, w = tiny_spec(), tiny_weights()
    xs = [one_hot([1, 5, 7, 2, 9], 8, TINY.vocab), one_hot([3, 3, 11], 8, TINY.vocab)]
    cfg = Config().with_overrides([f"compare.method={method}", "compare.bits=32"])
    outs, cctx, sctx, (client, server) = run_family(get_family("mpc"), spec, w, xs, tmp_path,
                                                    config=cfg)
    for x, y in zip(xs, outs):
        ref = spec.forward(TorchOps(w, exact=True), x)
        assert F.cosine_similarity(y, ref).item() >= 0.999
    assert client.store.remaining == 0 and server.store.remaining == 0
    # nothing but the embedding is ever opened in the clear
    assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("client", "output")] * len(xs)
    assert sctx.meter.reveals == cctx.meter.reveals
