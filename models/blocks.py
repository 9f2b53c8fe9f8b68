"""Transformer pieces shared by the encoder (models.bert) and the decoder (models.gpt).

On the exact plaintext backend (``TorchOps(exact=True)``) the blocks use torch's own
functions; on every other backend the MPC-friendly approximations written against Ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from approximations.normalization import LayerNormParams, SoftmaxParams, layernorm, softmax


def exact(ops) -> bool:
    return bool(getattr(ops, "exact", False))


def native(ops, fn: str):
    """The backend's own implementation of a nonlinear function (``native_gelu``,
    ``native_softmax``, ``native_layernorm``, ``native_rsqrt``), or None. A peer backend
    (CrypTen) is compared with its own functions where it has them."""
    return getattr(ops, f"native_{fn}", None)


def layer_norm(ops, x, name: str, p: LayerNormParams):
    """LayerNorm over the last dimension with the layer's weight and bias (server's)."""
    with ops.scope(name):
        if exact(ops):
            return F.layer_norm(x, x.shape[-1:], ops.weights[f"{name}.weight"],
                                ops.weights[f"{name}.bias"], eps=p.eps)
        own = native(ops, "layernorm")
        return ops.affine(own(x, p.eps, name) if own else layernorm(ops, x, p), name)


def softmax_last(ops, s, frac_bits: int, p: SoftmaxParams):
    if exact(ops):
        return torch.softmax(s, -1)
    own = native(ops, "softmax")
    return own(s) if own else softmax(ops, s, frac_bits, p)


def layer_params(i: int, d: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """One block's parameters: fused QKV, output projection, two LayerNorms, FFN."""
    return {f"l{i}.qkv.weight": (3 * d, d), f"l{i}.qkv.bias": (3 * d,),
            f"l{i}.o.weight": (d, d), f"l{i}.o.bias": (d,),
            f"l{i}.ln1.weight": (d,), f"l{i}.ln1.bias": (d,),
            f"l{i}.ff1.weight": (ffn, d), f"l{i}.ff1.bias": (ffn,),
            f"l{i}.ff2.weight": (d, ffn), f"l{i}.ff2.bias": (d,),
            f"l{i}.ln2.weight": (d,), f"l{i}.ln2.bias": (d,)}
