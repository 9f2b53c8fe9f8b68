"""BERT-family encoder written against Ops, and the all-MiniLM-L6-v2 importer.

Input: one-hot token rows (B, T, V), built by the client from its own token ids; padding
positions are all-zero rows, so the attention mask and the pooling mask are computed
from the input itself (pad_t = 1 - sum_v x_tv), and the server never sees the length,
only the public bucket T. Output: the L2-normalised mean of the unpadded token states
(sentence-transformers' mean pooling + Normalize).

  embeddings  x @ E (E: the word table, as a linear layer on one-hot rows) + positions +
              token type 0, LayerNorm
  layer i     fused QKV projection (query pre-scaled by 1/sqrt(d_head)), masked softmax
              attention, output projection, residual, LayerNorm; FFN d -> 4d GeLU -> d,
              residual, LayerNorm
  pooling     sum_t (1 - pad_t) h_t / T (T public), then h / |h|

Parameter names (ours): embed.weight (d, V), pos (P, d), type0 (d,), embed_ln.*, and per
layer l{i}.qkv.*, l{i}.o.*, l{i}.ln1.*, l{i}.ff1.*, l{i}.ff2.*, l{i}.ln2.*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from approximations.activations import (GeluErfParams, GeluPumaParams, GeluTanhParams, gelu_erf,
                                        gelu_puma, gelu_tanh)
from approximations.core import RsqrtParams, rsqrt
from approximations.normalization import LayerNormParams, SoftmaxParams
from models.blocks import exact, layer_norm, layer_params, native, softmax_last

MASK_PENALTY = -30.0   # added to scores of padded keys: exp underflows to 0


@dataclass(frozen=True)
class BertConfig:
    vocab: int = 30522
    d: int = 384
    layers: int = 6
    heads: int = 12
    ffn: int = 1536
    max_pos: int = 512
    frac_bits: int = 16
    # "erf": x/2 + an even polynomial on [-4, 4] (22 rounds, max error 2.4e-4 under mpc);
    # "tanh": the tanh form (cosine 0.999995 to exact on MiniLM, 41 rounds per GeLU);
    # "puma": PUMA's piecewise form (10 rounds, but cosine only 0.9988-0.9997 on short
    # sentences: its error near x = 3 is 0.02)
    gelu_form: str = "erf"
    gelu_erf: GeluErfParams = GeluErfParams()
    gelu: GeluPumaParams = GeluPumaParams()
    gelu_tanh: GeluTanhParams = GeluTanhParams()
    softmax: SoftmaxParams = field(default_factory=SoftmaxParams)
    layernorm: LayerNormParams = LayerNormParams()
    normalize: RsqrtParams = RsqrtParams(lo=-14, hi=14, iterations=2)


def bert_arch(cfg: BertConfig) -> dict:
    """What the equivariant transform (``models.equivariant``) needs to know."""
    return {"kind": "bert", "vocab": cfg.vocab, "d": cfg.d, "layers": cfg.layers,
            "heads": cfg.heads, "ffn": cfg.ffn}


def bert_params(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    d = cfg.d
    p = {"embed.weight": (d, cfg.vocab), "pos": (cfg.max_pos, d), "type0": (d,),
         "embed_ln.weight": (d,), "embed_ln.bias": (d,)}
    for i in range(cfg.layers):
        p.update(layer_params(i, d, cfg.ffn))
    return p


def _ln(ops, x, name, cfg):
    return layer_norm(ops, x, name, cfg.layernorm)


def _softmax(ops, s, cfg):
    return softmax_last(ops, s, cfg.frac_bits, cfg.softmax)


def _gelu(ops, f, cfg):
    if exact(ops):
        return F.gelu(f)
    if native(ops, "gelu"):
        return native(ops, "gelu")(f)
    if cfg.gelu_form == "puma":
        return gelu_puma(ops, f, cfg.gelu)
    if cfg.gelu_form == "erf":
        return gelu_erf(ops, f, cfg.gelu_erf)
    return gelu_tanh(ops, f, cfg.frac_bits, cfg.gelu_tanh)


def _rsqrt(ops, v, cfg):
    if exact(ops):
        return torch.rsqrt(v)
    own = native(ops, "rsqrt")
    return own(v) if own else rsqrt(ops, v, cfg.normalize)


def _attention(ops, h, mask, i, cfg):
    b, t, d = ops.shape(h)
    nh, dh = cfg.heads, d // cfg.heads
    with ops.scope("qkv"):
        qkv = ops.linear(h, f"l{i}.qkv")                                   # (B, T, 3d)
    qkv = ops.permute(ops.reshape(qkv, (b, t, 3, nh, dh)), (2, 0, 3, 1, 4))  # (3, B, H, T, dh)
    q, k, v = (ops.reshape(ops.narrow(qkv, 0, j, 1), (b, nh, t, dh)) for j in range(3))
    own = native(ops, "attention")          # a fused kernel (plaintext SDPA), q pre-scaled
    if own is not None:
        c = own(q, k, v, mask)                                             # (B, H, T, dh)
        c = ops.reshape(ops.permute(c, (0, 2, 1, 3)), (b, t, d))
        with ops.scope("out"):
            return ops.linear(c, f"l{i}.o")
    with ops.scope("scores"):
        s = ops.add(ops.matmul(q, ops.permute(k, (0, 1, 3, 2))), mask)      # (B, H, T, T)
    with ops.scope("softmax"):
        p = _softmax(ops, s, cfg)
    with ops.scope("context"):
        c = ops.matmul(p, v)                                               # (B, H, T, dh)
    c = ops.reshape(ops.permute(c, (0, 2, 1, 3)), (b, t, d))
    with ops.scope("out"):
        return ops.linear(c, f"l{i}.o")


def _layer(ops, h, mask, i, cfg):
    with ops.scope(f"layer{i}"):
        with ops.scope("attn"):
            h = _ln(ops, ops.add(h, _attention(ops, h, mask, i, cfg)), f"l{i}.ln1", cfg)
        with ops.scope("ffn"):
            with ops.scope("ff1"):
                f = ops.linear(h, f"l{i}.ff1")
            with ops.scope("gelu"):
                f = _gelu(ops, f, cfg)
            with ops.scope("ff2"):
                f = ops.linear(f, f"l{i}.ff2")
            return _ln(ops, ops.add(h, f), f"l{i}.ln2", cfg)


def make_forward(cfg: BertConfig):
    def forward(ops, x):
        b, t, _ = ops.shape(x)                                  # x: (B, T, V) one-hot rows
        with ops.scope("embed"):
            h = ops.linear(x, "embed")                          # (B, T, d)
            h = ops.add_weight(ops.add_weight(h, "pos", rows=t), "type0")
            pad = ops.add_public(ops.neg(ops.sum(x, -1)), 1.0)  # (B, T): 1 at padding
            keep = ops.add_public(ops.neg(pad), 1.0)
            mask = ops.reshape(ops.mul_public(pad, MASK_PENALTY), (b, 1, 1, t))
        h = _ln(ops, h, "embed_ln", cfg)
        for i in range(cfg.layers):
            h = _layer(ops, h, mask, i, cfg)
        with ops.scope("pool"):
            pooled = ops.mul_public(ops.matmul(ops.reshape(keep, (b, 1, t)), h), 1.0 / t)
            pooled = ops.reshape(pooled, (b, cfg.d))
            norm2 = ops.sum(ops.square(pooled), -1, keepdim=True)
            return ops.mul(pooled, _rsqrt(ops, norm2, cfg))
    return forward


def import_hf_bert(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """HF BERT parameter names -> ours (float64), with the query pre-scaled."""
    def get(name):
        try:
            return state[name].to(torch.float64)
        except KeyError:
            raise KeyError(f"BERT checkpoint lacks {name}") from None

    scale = 1.0 / math.sqrt(cfg.d // cfg.heads)
    out = {"embed.weight": get("embeddings.word_embeddings.weight").t().contiguous(),
           "pos": get("embeddings.position_embeddings.weight"),
           "type0": get("embeddings.token_type_embeddings.weight")[0],
           "embed_ln.weight": get("embeddings.LayerNorm.weight"),
           "embed_ln.bias": get("embeddings.LayerNorm.bias")}
    for i in range(cfg.layers):
        pre = f"encoder.layer.{i}."
        att = pre + "attention."
        out[f"l{i}.qkv.weight"] = torch.cat([get(att + "self.query.weight") * scale,
                                             get(att + "self.key.weight"),
                                             get(att + "self.value.weight")])
        out[f"l{i}.qkv.bias"] = torch.cat([get(att + "self.query.bias") * scale,
                                           get(att + "self.key.bias"),
                                           get(att + "self.value.bias")])
        pairs = {"o": att + "output.dense", "ln1": att + "output.LayerNorm",
                 "ff1": pre + "intermediate.dense", "ff2": pre + "output.dense",
                 "ln2": pre + "output.LayerNorm"}
        for ours, theirs in pairs.items():
            out[f"l{i}.{ours}.weight"] = get(theirs + ".weight")
            out[f"l{i}.{ours}.bias"] = get(theirs + ".bias")
    return out
