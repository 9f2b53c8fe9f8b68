"""GPT-2-family decoder written against Ops, a KV cache, and the HF GPT-2 importer.

Inputs, built by the client: one-hot token rows (B, n, V) and one-hot POSITION rows
(B, n, ctx), so the positions (and with them the prompt length) stay private; a padding
row is an all-zero token row, and its key is masked for every later query (``valid``).
The model processes n new rows against a KV cache (prefill: n = prompt length; decode:
n = 1); query i attends to every cached key and to new keys j <= i.

  embed    x @ wte + p @ wpe (both as linear layers on one-hot rows)
  layer i  h += o(attn(ln1(h)))  (fused QKV, query pre-scaled by 1/sqrt(d_head), causal)
           h += ff2(gelu(ff1(ln2(h))))  (GPT-2's tanh GeLU)
  head     lnf(h) @ wte^T  (tied; no bias)

Parameter names (ours): embed.weight (d, V) = wte^T, head.weight (V, d) = wte,
wpe.weight (d, ctx) = wpe^T, per layer l{i}.{ln1,qkv,o,ln2,ff1,ff2}.{weight,bias},
lnf.{weight,bias}. Masks are public tensors applied with mul_public/add_public; the
validity of rows is a backend value (from the one-hot rows), never opened.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from approximations.activations import GeluPumaParams, GeluTanhParams, gelu_puma, gelu_tanh
from approximations.normalization import LayerNormParams, SoftmaxParams
from models.blocks import exact, layer_norm, layer_params, softmax_last

MASK_PENALTY = -30.0        # masked scores under the approximations (exp underflows to ~0)
EXACT_MASK_PENALTY = -1e9   # on the exact float backend: exp is exactly 0


@dataclass(frozen=True)
class GptConfig:
    vocab: int = 64
    d: int = 64
    layers: int = 2
    heads: int = 4
    ctx: int = 1024
    ffn: int = 256
    frac_bits: int = 16
    eps: float = 1e-5
    gelu_tanh: GeluTanhParams = GeluTanhParams()
    gelu_form: str = "tanh"      # approximation off the exact backend: "tanh" or "puma"
    gelu_puma: GeluPumaParams = GeluPumaParams()
    softmax: SoftmaxParams = field(default_factory=SoftmaxParams)
    layernorm: LayerNormParams = LayerNormParams()   # its eps is replaced by ``eps``


def gpt_arch(cfg: GptConfig) -> dict:
    """What the equivariant transform (``models.equivariant``) needs to know."""
    return {"kind": "gpt", "vocab": cfg.vocab, "d": cfg.d, "layers": cfg.layers,
            "heads": cfg.heads, "ffn": cfg.ffn}


def gpt_params(cfg: GptConfig) -> dict[str, tuple[int, ...]]:
    d, f = cfg.d, cfg.ffn
    p = {"embed.weight": (d, cfg.vocab), "head.weight": (cfg.vocab, d),
         "wpe.weight": (d, cfg.ctx), "lnf.weight": (d,), "lnf.bias": (d,)}
    for i in range(cfg.layers):
        p.update(layer_params(i, d, f))
    return p


def _ln(ops, x, name, cfg):
    return layer_norm(ops, x, name, dataclasses.replace(cfg.layernorm, eps=cfg.eps))


def _softmax(ops, s, cfg):
    return softmax_last(ops, s, cfg.frac_bits, cfg.softmax)


def _gelu(ops, f, cfg):
    if exact(ops):
        return F.gelu(f, approximate="tanh")
    if cfg.gelu_form == "puma":
        return gelu_puma(ops, f, cfg.gelu_puma)
    return gelu_tanh(ops, f, cfg.frac_bits, cfg.gelu_tanh)


class KVCache:
    """Per-layer keys and values (B, H, length, d_head) as backend values, plus the rows'
    validity (B, length) as a backend value. ``length`` is public (a configured budget)."""

    def __init__(self, cfg: GptConfig, policy=None, prompt_len: int = 0):
        self.cfg = cfg
        self.prompt_len_hint = prompt_len          # public: the prompt bucket, known upfront
        self.k: list = [None] * cfg.layers
        self.v: list = [None] * cfg.layers
        self.valid = None
        self.length = 0
        self.query_start = 0
        # eviction (models.kv_eviction): the policy and its state; public prompt length
        self.policy = policy
        self.prompt_len = 0
        self.prefilled = False
        self.importance: dict = {}
        self.static: dict = {}
        self.summary: dict = {}
        self.selection: dict = {}

    def evicting(self) -> bool:
        return self.prefilled and self.policy is not None and self.policy.active(self.prompt_len)

    def finish_prefill(self, ops) -> None:
        """The prompt is in: the policy's look-once static step (meter scope "static")."""
        self.prompt_len, self.prefilled = self.length, True
        if self.evicting():
            with ops.scope("static"):
                self.policy.finish_prefill(ops, self)

    def append(self, ops, layer: int, k, v):
        """Append n new rows to ``layer``; returns the layer's full keys and values as
        cached operands (``ops.cache_append``: under mpc each row keeps its mask)."""
        self.k[layer], self.v[layer] = ops.cache_append(
            [(f"l{layer}.k", self.k[layer], k, 2), (f"l{layer}.v", self.v[layer], v, 2)])
        return self.k[layer], self.v[layer]

    def append_valid(self, ops, valid):
        self.valid = valid if self.valid is None else ops.cat([self.valid, valid], 1)
        self.length = ops.shape(self.valid)[1]
        return self.valid


def _causal(cached: int, n: int, dtype) -> torch.Tensor:
    """Public (n, cached + n) mask: 1 where new query i may see key j (j < cached + i + 1)."""
    j = torch.arange(cached + n).reshape(1, -1)
    i = torch.arange(n).reshape(-1, 1)
    return (j <= cached + i).to(dtype)


def _attention(ops, h, key_pen, keep, pen, i, cfg, cache):
    b, n, d = ops.shape(h)
    nh, dh = cfg.heads, d // cfg.heads
    with ops.scope("qkv"):
        qkv = ops.linear(h, f"l{i}.qkv")                                     # (B, n, 3d)
    qkv = ops.permute(ops.reshape(qkv, (b, n, 3, nh, dh)), (2, 0, 3, 1, 4))  # (3, B, H, n, dh)
    q, k, v = (ops.reshape(ops.narrow(qkv, 0, j, 1), (b, nh, n, dh)) for j in range(3))
    if cache is not None:
        k, v = cache.append(ops, i, k, v)                                  # (B, H, L+n, dh)
        if cache.evicting():
            from models.kv_eviction import attend
            with ops.scope("evict"):
                c = attend(ops, q, cache.policy.parts(ops, i, q, cache),
                           lambda s: _softmax(ops, s, cfg))
            c = ops.reshape(ops.permute(c, (0, 2, 1, 3)), (b, n, d))
            with ops.scope("out"):
                return ops.linear(c, f"l{i}.o")
    with ops.scope("scores"):
        s = ops.matmul(q, ops.permute(k, (0, 1, 3, 2))) if cache is None else \
            ops.matmul_cached(q, k, transpose=True)                        # (B, H, n, L+n)
        s = ops.add_public(ops.mul_public(s, keep), (1.0 - keep) * pen)    # causal (public)
        s = ops.add(s, key_pen)                                            # padded keys
    with ops.scope("softmax"):
        p = _softmax(ops, s, cfg)
    if cache is not None and cache.policy is not None and not cache.prefilled:
        cache.policy.observe_prefill(ops, i, p, cache, cache.query_start)
    with ops.scope("context"):
        c = ops.matmul(p, v) if cache is None else ops.matmul_cached(p, v)  # (B, H, n, dh)
    c = ops.reshape(ops.permute(c, (0, 2, 1, 3)), (b, n, d))
    with ops.scope("out"):
        return ops.linear(c, f"l{i}.o")


def _layer(ops, h, key_pen, keep, pen, i, cfg, cache):
    with ops.scope(f"layer{i}"):
        with ops.scope("attn"):
            a = _attention(ops, _ln(ops, h, f"l{i}.ln1", cfg), key_pen, keep, pen, i, cfg,
                           cache)
            h = ops.add(h, a)
        with ops.scope("ffn"):
            f = _ln(ops, h, f"l{i}.ln2", cfg)
            with ops.scope("ff1"):
                f = ops.linear(f, f"l{i}.ff1")
            with ops.scope("gelu"):
                f = _gelu(ops, f, cfg)
            with ops.scope("ff2"):
                f = ops.linear(f, f"l{i}.ff2")
            return ops.add(h, f)


def forward(ops, tokens_onehot, positions_onehot, cache: KVCache | None, valid=None, *,
            cfg: GptConfig):
    """Logits (B, n, V) for n new rows. ``valid`` (B, n): 1.0 for real rows, 0.0 for
    padding (default: the token rows' sums, so an all-zero row is padding). With a cache,
    the new rows' keys, values and validity are appended to it."""
    b, n, _ = ops.shape(tokens_onehot)
    cached = 0 if cache is None else cache.length
    if cache is not None:
        cache.query_start = cached
    if cached + n > cfg.ctx:
        raise ValueError(f"gpt: {cached} cached + {n} new rows exceed the context {cfg.ctx}")
    pen = EXACT_MASK_PENALTY if exact(ops) else MASK_PENALTY
    with ops.scope("embed"):
        h = ops.add(ops.linear(tokens_onehot, "embed"), ops.linear(positions_onehot, "wpe"))
        if valid is None:
            valid = ops.sum(tokens_onehot, -1)                          # (B, n)
        all_valid = valid if cache is None else cache.append_valid(ops, valid)
        key_pen = ops.reshape(ops.mul_public(ops.add_public(ops.neg(all_valid), 1.0), pen),
                              (b, 1, 1, cached + n))
        keep = _causal(cached, n, torch.float32)   # 0/1 and the penalties are exact in f32
    for i in range(cfg.layers):
        h = _layer(ops, h, key_pen, keep, pen, i, cfg, cache)
    h = _ln(ops, h, "lnf", cfg)
    with ops.scope("head"):
        return ops.linear(h, "head")


def one_hot_rows(ids, n: int, dtype=torch.float64) -> torch.Tensor:
    """Client side: one-hot rows of integer ids (negative id: an all-zero padding row)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return F.one_hot(ids.clamp(min=0), n).to(dtype) * (ids >= 0).unsqueeze(-1).to(dtype)


def greedy_generate(ops_factory_or_ops, prompt_ids, max_new_tokens: int, *, cfg: GptConfig,
                    return_logits: bool = False):
    """Plaintext greedy decoding with the KV cache: prefill the prompt, then one row per
    step. ``ops_factory_or_ops``: an Ops, or a callable returning one. Returns the new ids
    (and the per-step logits rows if asked)."""
    ops = ops_factory_or_ops if hasattr(ops_factory_or_ops, "linear") else ops_factory_or_ops()
    prompt = [int(t) for t in prompt_ids]
    if len(prompt) + max_new_tokens - 1 > cfg.ctx:
        raise ValueError(f"gpt: {len(prompt)} prompt + {max_new_tokens} new tokens exceed the "
                         f"context {cfg.ctx}")
    cache, out, rows = KVCache(cfg), [], []
    ids, pos = [prompt], [list(range(len(prompt)))]
    for _ in range(max_new_tokens):
        logits = forward(ops, ops.input(one_hot_rows(ids, cfg.vocab)),
                         ops.input(one_hot_rows(pos, cfg.ctx)), cache, cfg=cfg)
        last = logits[0, -1]
        rows.append(last)
        nxt = int(torch.argmax(last))
        out.append(nxt)
        ids, pos = [[nxt]], [[cache.length]]
    return (out, rows) if return_logits else out


def check_cached_equals_full(weights, cfg: GptConfig, prompt_ids, max_new_tokens: int) -> float:
    """Greedy decode with the cache, then recompute all rows in one full pass; returns the
    largest |difference| of the logits of every generated step (exact float64 backend)."""
    from protocols.ops import TorchOps
    ops = TorchOps(weights, exact=True)
    new, rows = greedy_generate(ops, prompt_ids, max_new_tokens, cfg=cfg, return_logits=True)
    seq = list(prompt_ids) + new[:-1]
    full = forward(ops, one_hot_rows([seq], cfg.vocab), one_hot_rows([range(len(seq))], cfg.ctx),
                   None, cfg=cfg)[0, len(prompt_ids) - 1:]
    return float((full - torch.stack(rows)).abs().max())


def import_hf_gpt2(state: dict[str, torch.Tensor], cfg: GptConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 names (with or without the ``transformer.`` prefix) -> ours (float64).
    Conv1D weights are (in, out): transposed; the query is pre-scaled."""
    def get(name):
        for key in (f"transformer.{name}", name):
            if key in state:
                return state[key].to(torch.float64)
        raise KeyError(f"GPT-2 checkpoint lacks {name}")

    d = cfg.d
    scale = torch.ones(3 * d, dtype=torch.float64)
    scale[:d] = 1.0 / math.sqrt(d // cfg.heads)
    wte = get("wte.weight")
    out = {"embed.weight": wte.t().contiguous(), "head.weight": wte.clone(),
           "wpe.weight": get("wpe.weight")[:cfg.ctx].t().contiguous(),
           "lnf.weight": get("ln_f.weight"), "lnf.bias": get("ln_f.bias")}
    for i in range(cfg.layers):
        pre = f"h.{i}."
        out[f"l{i}.qkv.weight"] = get(pre + "attn.c_attn.weight").t() * scale.unsqueeze(1)
        out[f"l{i}.qkv.bias"] = get(pre + "attn.c_attn.bias") * scale
        for ours, theirs in {"o": "attn.c_proj", "ff1": "mlp.c_fc", "ff2": "mlp.c_proj"}.items():
            out[f"l{i}.{ours}.weight"] = get(pre + theirs + ".weight").t().contiguous()
            out[f"l{i}.{ours}.bias"] = get(pre + theirs + ".bias")
        for ours, theirs in {"ln1": "ln_1", "ln2": "ln_2"}.items():
            out[f"l{i}.{ours}.weight"] = get(pre + theirs + ".weight")
            out[f"l{i}.{ours}.bias"] = get(pre + theirs + ".bias")
    return {k: v.contiguous() for k, v in out.items()}


def export_hf_gpt2(weights: dict[str, torch.Tensor], cfg: GptConfig) -> dict[str, torch.Tensor]:
    """Ours -> HF GPT-2 names (GPT2LMHeadModel layout, tied lm_head)."""
    d = cfg.d
    scale = torch.ones(3 * d, dtype=torch.float64)
    scale[:d] = math.sqrt(d // cfg.heads)
    w = {k: v.to(torch.float64) for k, v in weights.items()}
    out = {"transformer.wte.weight": w["head.weight"].clone(),
           "transformer.wpe.weight": w["wpe.weight"].t().contiguous(),
           "transformer.ln_f.weight": w["lnf.weight"], "transformer.ln_f.bias": w["lnf.bias"],
           "lm_head.weight": w["head.weight"].clone()}
    for i in range(cfg.layers):
        pre = f"transformer.h.{i}."
        out[pre + "attn.c_attn.weight"] = (w[f"l{i}.qkv.weight"] * scale.unsqueeze(1)).t()
        out[pre + "attn.c_attn.bias"] = w[f"l{i}.qkv.bias"] * scale
        for ours, theirs in {"o": "attn.c_proj", "ff1": "mlp.c_fc", "ff2": "mlp.c_proj"}.items():
            out[pre + theirs + ".weight"] = w[f"l{i}.{ours}.weight"].t()
            out[pre + theirs + ".bias"] = w[f"l{i}.{ours}.bias"]
        for ours, theirs in {"ln1": "ln_1", "ln2": "ln_2"}.items():
            out[pre + theirs + ".weight"] = w[f"l{i}.{ours}.weight"]
            out[pre + theirs + ".bias"] = w[f"l{i}.{ours}.bias"]
    return {k: v.contiguous() for k, v in out.items()}
