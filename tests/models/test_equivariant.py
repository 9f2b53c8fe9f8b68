"""Equivariant encryption: every supported layer commutes with the key, whole models are
exact to float32 precision, a wrong key gives wrong outputs, deployments get fresh keys,
and the ``ee`` family runs encoder and decoder end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from approximations.normalization import LayerNormParams
from models import bert
from models.blocks import layer_norm
from models.equivariant import EeKey, EeKeyError, transform_weights
from models.registry import get_model
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import run_family
from tests.models.test_bert import TINY, one_hot, tiny_spec, tiny_weights

EXACT = 1e-4       # float32 precision, on logits or embeddings


@pytest.fixture(scope="module")
def tiny():
    spec, w = tiny_spec(), tiny_weights()
    key = EeKey.generate(spec)
    return spec, w, key, transform_weights(spec, w, key)


def _hidden(seed=0, t=8):
    return torch.randn((1, t, TINY.d), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_embedding_commutes(tiny):
    spec, w, key, w2 = tiny
    x = one_hot([1, 5, 7, 2], 8, TINY.vocab)
    plain = TorchOps(w, exact=True).linear(x, "embed")
    assert torch.allclose(TorchOps(w2, exact=True).linear(key.encrypt_tokens(x), "embed"),
                          plain[..., key.hidden], atol=1e-12)


def test_linear_layers_commute(tiny):
    spec, w, key, w2 = tiny
    h = _hidden()
    f = TorchOps(w, exact=True).linear(h, "l0.ff1")
    f2 = TorchOps(w2, exact=True).linear(h[..., key.hidden], "l0.ff1")
    assert torch.allclose(f2, f[..., key.ffn[0]], atol=1e-12)
    g = torch.randn((1, 8, TINY.ffn), dtype=torch.float64)
    o = TorchOps(w, exact=True).linear(g, "l0.ff2")
    o2 = TorchOps(w2, exact=True).linear(g[..., key.ffn[0]], "l0.ff2")
    assert torch.allclose(o2, o[..., key.hidden], atol=1e-12)


def test_layernorm_commutes(tiny):
    spec, w, key, w2 = tiny
    h = _hidden(1)
    p = LayerNormParams()
    a = layer_norm(TorchOps(w, exact=True), h, "l0.ln1", p)
    b = layer_norm(TorchOps(w2, exact=True), h[..., key.hidden], "l0.ln1", p)
    assert torch.allclose(b, a[..., key.hidden], atol=1e-12)


@pytest.mark.parametrize("fn", [F.gelu, F.relu, F.silu])
def test_elementwise_activations_commute(tiny, fn):
    _, _, key, _ = tiny
    h = _hidden(2) * 3
    assert torch.equal(fn(h[..., key.hidden]), fn(h)[..., key.hidden])


def test_attention_commutes_with_head_permutations_and_rotations(tiny):
    spec, w, key, w2 = tiny
    h = _hidden(3)
    mask = torch.zeros((1, 1, 1, 8), dtype=torch.float64)
    mask[..., 6:] = bert.MASK_PENALTY                     # two padded keys
    a = bert._attention(TorchOps(w, exact=True), h, mask, 1, TINY)
    b = bert._attention(TorchOps(w2, exact=True), h[..., key.hidden], mask, 1, TINY)
    assert torch.allclose(b, a[..., key.hidden], atol=1e-12)
    assert not torch.equal(key.qk[1][0], torch.eye(TINY.d // TINY.heads, dtype=torch.float64))


def _encoder_error(spec, w, key, w2, x):
    ref = spec.forward(TorchOps(w, exact=True), x)
    out = spec.forward(TorchOps(w2, exact=True), key.encrypt_tokens(x))
    return float((key.decrypt_features(out) - ref).abs().max()), float((out - ref).abs().max())


def test_minilm_is_exact_and_a_wrong_key_is_wrong():
    from models.minilm import Tokenizer
    spec = get_model("minilm")
    w = spec.load_weights()
    x = Tokenizer().one_hot("Equivariant encryption is obfuscation, not cryptography.", 32)
    key = EeKey.generate(spec)
    w2 = transform_weights(spec, w, key)
    err, undecrypted = _encoder_error(spec, w, key, w2, x)
    assert err <= EXACT and undecrypted > 0.05
    other = EeKey.generate(spec)
    wrong = other.decrypt_features(spec.forward(TorchOps(w2, exact=True), other.encrypt_tokens(x)))
    ref = spec.forward(TorchOps(w, exact=True), x)
    assert F.cosine_similarity(wrong, ref).item() < 0.5


def test_decoder_logits_are_exact():
    spec = get_model("tiny-gpt")
    w = spec.load_weights()
    key = EeKey.generate(spec)
    w2 = transform_weights(spec, w, key)
    cfg = spec.decoder.cfg
    x = torch.zeros((1, 16, cfg.vocab + cfg.ctx), dtype=torch.float64)
    ids = torch.randint(0, cfg.vocab, (16,), generator=torch.Generator().manual_seed(4))
    x[0, torch.arange(16), ids] = 1.0
    x[0, torch.arange(16), cfg.vocab + torch.arange(16)] = 1.0
    ref = spec.forward(TorchOps(w, exact=True), x)
    xe = torch.cat([key.encrypt_tokens(x[..., :cfg.vocab]), x[..., cfg.vocab:]], dim=-1)
    out = spec.forward(TorchOps(w2, exact=True), xe)
    assert float((key.decrypt_logits(out) - ref).abs().max()) <= EXACT


def test_two_deployments_get_different_keys(tiny):
    spec = tiny[0]
    a, b = EeKey.generate(spec), EeKey.generate(spec)
    assert a.deployment != b.deployment and a.fingerprint() != b.fingerprint()
    assert not torch.equal(a.vocab, b.vocab) and not torch.equal(a.hidden, b.hidden)
    assert sorted(a.vocab.tolist()) == list(range(TINY.vocab))      # permutations


def test_key_files_round_trip_and_bad_files_are_refused(tiny, tmp_path):
    spec, _, key, _ = tiny
    key.save(tmp_path / "k.safetensors")
    back = EeKey.load(tmp_path / "k.safetensors")
    assert back.fingerprint() == key.fingerprint() and back.deployment == key.deployment
    (tmp_path / "bad").write_bytes(b"\x80\x04not a key")
    with pytest.raises(EeKeyError, match="not an ee key file"):
        EeKey.load(tmp_path / "bad")
    with pytest.raises(EeKeyError, match="does not fit"):
        transform_weights(get_model("minilm"), {}, key)
    with pytest.raises(EeKeyError, match="no equivariant transform"):
        EeKey.generate(get_model("digits-mlp"))


def test_ee_family_encoder_end_to_end(tiny, tmp_path):
    spec, w, key, w2 = tiny
    xs = [one_hot([1, 5, 7, 2, 9], 8, TINY.vocab), one_hot([3, 3], 8, TINY.vocab)]
    outs, cctx, sctx, _ = run_family(get_family("ee"), spec, w2, xs, tmp_path, ee_key=key,
                                     ee_deployment=key.deployment)
    for x, y in zip(xs, outs):
        assert float((y - spec.forward(TorchOps(w, exact=True), x)).abs().max()) <= EXACT
    # the host sees the transformed input and output: declared, logged
    assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("server", "ee.input"),
                                                           ("server", "ee.output")] * 2


def test_ee_family_refuses_a_key_of_another_deployment(tiny, tmp_path):
    spec, w, key, w2 = tiny
    with pytest.raises(EeKeyError, match="the host serves deployment"):
        run_family(get_family("ee"), spec, w2, [one_hot([1], 8, TINY.vocab)], tmp_path,
                   ee_key=EeKey.generate(spec), ee_deployment=key.deployment)


def test_ee_family_decodes_like_plaintext(tmp_path):
    spec = get_model("tiny-gpt")
    w = spec.load_weights()
    key = EeKey.generate(spec)
    from models.train_tiny_gpt import make_task
    toks, answers, _ = make_task(1, 20, torch.Generator().manual_seed(3))
    x = spec.decoder.encode_prompt(toks[0].tolist(), 32)
    outs, _, _, _ = run_family(get_family("ee"), spec, transform_weights(spec, w, key), [x],
                               tmp_path, ee_key=key, ee_deployment=key.deployment, new_tokens=3)
    ref, _, _, _ = run_family(get_family("plaintext"), spec, w, [x], tmp_path / "p",
                              new_tokens=3)
    assert outs[0].tolist() == ref[0].tolist()
    assert outs[0].reshape(-1)[0].item() == int(answers[0, 0])      # answers the query
