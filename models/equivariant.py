"""Equivariant encryption (EE): a keyed transform of a transformer's weights, so that
decrypt(F'(encrypt(x))) = F(x) with F' the transformed model run by an untrusted host.

It is obfuscation, not cryptography: nothing here rests on a hardness assumption, and a
host that knows the public base weights recovers the key by matching rows
(``benchmarks/ee_attacks.py`` measures it).

Key (fresh per deployment; randomness from ``secrets``). Permutations are index arrays
"new position -> old position":
  vocab       the vocabulary (the client's private tokenizer): x' = x[..., vocab]
  hidden      the d residual-stream features: h' = h[..., hidden]
  ffn[i]      block i's FFN features
  heads[i]    block i's attention heads
  qk[i]       per head an orthogonal dh x dh matrix A: Q -> Q A, K -> K A, so that
              Q' K'^T = Q A A^T K^T = Q K^T (scores, hence the softmax, unchanged)
  vo[i]       per head an orthogonal B: V -> V B; the output projection undoes it
Why each layer commutes: embedding and linear layers are re-indexed (rows by the output
permutation, columns by the input one); LayerNorm's mean and variance do not depend on
the order of features, and its weight and bias are permuted with them; GeLU, ReLU and
SiLU act elementwise; attention is covered by ``heads``, ``qk`` and ``vo`` above; mean
pooling and L2 normalisation commute with feature permutations; a tied output head is
re-indexed by ``vocab`` and ``hidden``, so the logits come out permuted by ``vocab``.
Positions are not transformed: the host sees the order of rows (and, for a decoder, it
builds the position rows of the tokens it generates itself).
Leaks (to the host): the public shapes, the order and number of rows, the padding rows
(all-zero), the permuted token ids it is sent and generates (so token frequencies), and
the transformed weights, which match the public base weights row for row.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class EeKeyError(ValueError):
    """A key that does not fit the model or the deployment."""


def _uniform(n: int) -> np.ndarray:
    raw = np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8") >> np.uint64(11)
    return (raw.astype(np.float64) + 0.5) / float(1 << 53)


def random_permutation(n: int) -> torch.Tensor:
    return torch.from_numpy(np.argsort(_uniform(n), kind="stable"))


def random_orthogonal(n: int) -> torch.Tensor:
    """Haar-distributed orthogonal matrix: QR of a Gaussian (Box-Muller from ``secrets``),
    signs fixed so that the distribution is uniform."""
    u1, u2 = _uniform(n * n), _uniform(n * n)
    g = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    q, r = np.linalg.qr(g.reshape(n, n))
    return torch.from_numpy(q * np.sign(np.diag(r))[None, :])


@dataclass(frozen=True)
class Arch:
    """What the transform needs to know of a model: its kind and attention geometry."""

    kind: str            # "bert" (encoder, embedding output) or "gpt" (decoder, tied head)
    vocab: int
    d: int
    layers: int
    heads: int
    ffn: int

    @classmethod
    def of(cls, spec) -> "Arch":
        info = spec.notes.get("ee")
        if not info:
            raise EeKeyError(f"model {spec.name!r} has no equivariant transform (ee supports "
                             "the BERT and GPT transformer families)")
        return cls(**info)


@dataclass
class EeKey:
    model: str
    deployment: str                    # random id, public: names the deployment
    vocab: torch.Tensor
    hidden: torch.Tensor
    ffn: list[torch.Tensor]
    heads: list[torch.Tensor]
    qk: list[torch.Tensor]             # (heads, dh, dh) per block
    vo: list[torch.Tensor]

    @classmethod
    def generate(cls, spec) -> "EeKey":
        a = Arch.of(spec)
        dh = a.d // a.heads
        return cls(spec.name, secrets.token_hex(8), random_permutation(a.vocab),
                   random_permutation(a.d), [random_permutation(a.ffn) for _ in range(a.layers)],
                   [random_permutation(a.heads) for _ in range(a.layers)],
                   [torch.stack([random_orthogonal(dh) for _ in range(a.heads)])
                    for _ in range(a.layers)],
                   [torch.stack([random_orthogonal(dh) for _ in range(a.heads)])
                    for _ in range(a.layers)])

    # -- client side ------------------------------------------------------------------
    def encrypt_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot token rows (..., V) -> their permuted columns."""
        return x[..., self.vocab]

    def decrypt_features(self, y: torch.Tensor) -> torch.Tensor:
        """Features (..., d) in the host's order -> the model's order."""
        out = torch.empty_like(y)
        out[..., self.hidden] = y
        return out

    def decrypt_logits(self, y: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) in the host's vocabulary order -> the model's order."""
        out = torch.empty_like(y)
        out[..., self.vocab] = y
        return out

    def decrypt_token(self, token: int) -> int:
        """A token id the host generated (permuted) -> the real token id."""
        return int(self.vocab[token])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in [self.vocab, self.hidden, *self.ffn, *self.heads, *self.qk, *self.vo]:
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # -- files (safetensors + JSON; never pickle) ---------------------------------------
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file
        tensors = {"vocab": self.vocab, "hidden": self.hidden}
        for i in range(len(self.ffn)):
            tensors.update({f"ffn.{i}": self.ffn[i], f"heads.{i}": self.heads[i],
                            f"qk.{i}": self.qk[i], f"vo.{i}": self.vo[i]})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                  metadata={"model": self.model, "deployment": self.deployment})

    @classmethod
    def load(cls, path: Path) -> "EeKey":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                t = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise EeKeyError(f"{path} is not an ee key file: {exc}") from None
        n = sum(1 for k in t if k.startswith("ffn."))
        try:
            return cls(meta["model"], meta["deployment"], t["vocab"], t["hidden"],
                       [t[f"ffn.{i}"] for i in range(n)], [t[f"heads.{i}"] for i in range(n)],
                       [t[f"qk.{i}"] for i in range(n)], [t[f"vo.{i}"] for i in range(n)])
        except KeyError as exc:
            raise EeKeyError(f"{path}: ee key file lacks {exc}") from None


def _heads_rows(w: torch.Tensor, heads: int, perm, mats) -> torch.Tensor:
    """Rows of one projection (d_out = heads * dh, ...) re-indexed by head and rotated:
    new head g holds old head perm[g], multiplied by mats[g]^T (Q A = h (A^T W)^T)."""
    dh = w.shape[0] // heads
    blocks = w.reshape(heads, dh, *w.shape[1:])[perm]
    return torch.einsum("gab,gb...->ga...", mats.transpose(1, 2).to(w.dtype),
                        blocks).reshape(w.shape)


def transform_weights(spec, weights: dict[str, torch.Tensor], key: EeKey) -> dict:
    """The owner's one-time transform (float64 throughout)."""
    a = Arch.of(spec)
    if key.model != spec.name or len(key.vocab) != a.vocab or len(key.hidden) != a.d \
            or len(key.ffn) != a.layers:
        raise EeKeyError(f"key of model {key.model!r} (vocab {len(key.vocab)}, d "
                         f"{len(key.hidden)}) does not fit model {spec.name!r}")
    p, v = key.hidden, key.vocab
    w = {k: t.to(torch.float64) for k, t in weights.items()}
    out = {"embed.weight": w["embed.weight"][p][:, v]}
    if a.kind == "bert":
        out.update({"pos": w["pos"][:, p], "type0": w["type0"][p]})
        norms = ["embed_ln"]
    else:
        out.update({"wpe.weight": w["wpe.weight"][p], "head.weight": w["head.weight"][v][:, p]})
        norms = ["lnf"]
    for name in norms:
        out[f"{name}.weight"], out[f"{name}.bias"] = w[f"{name}.weight"][p], w[f"{name}.bias"][p]
    for i in range(a.layers):
        out.update(_block(w, i, a, key, p))
    extra = sorted(set(w) - set(out))
    if extra:
        raise EeKeyError(f"no transform for tensors {extra}")
    return out


def _block(w, i, a: Arch, key: EeKey, p) -> dict:
    pre = f"l{i}"
    hs, qk, vo, fs = key.heads[i], key.qk[i], key.vo[i], key.ffn[i]
    wq, wk, wv = w[f"{pre}.qkv.weight"][:, p].chunk(3)
    bq, bk, bv = w[f"{pre}.qkv.bias"].chunk(3)
    qkv_w = torch.cat([_heads_rows(wq, a.heads, hs, qk), _heads_rows(wk, a.heads, hs, qk),
                       _heads_rows(wv, a.heads, hs, vo)])
    qkv_b = torch.cat([_heads_rows(bq, a.heads, hs, qk), _heads_rows(bk, a.heads, hs, qk),
                       _heads_rows(bv, a.heads, hs, vo)])
    # o's input columns: new head g holds old head hs[g] times vo[g]: W_o,new = W_o,old B
    dh = a.d // a.heads
    wo = w[f"{pre}.o.weight"][p].reshape(a.d, a.heads, dh)[:, hs]
    wo = torch.einsum("jga,gab->jgb", wo, vo.to(wo.dtype)).reshape(a.d, a.d)
    out = {f"{pre}.qkv.weight": qkv_w, f"{pre}.qkv.bias": qkv_b,
           f"{pre}.o.weight": wo, f"{pre}.o.bias": w[f"{pre}.o.bias"][p],
           f"{pre}.ff1.weight": w[f"{pre}.ff1.weight"][fs][:, p],
           f"{pre}.ff1.bias": w[f"{pre}.ff1.bias"][fs],
           f"{pre}.ff2.weight": w[f"{pre}.ff2.weight"][p][:, fs],
           f"{pre}.ff2.bias": w[f"{pre}.ff2.bias"][p]}
    for ln in ("ln1", "ln2"):
        out[f"{pre}.{ln}.weight"] = w[f"{pre}.{ln}.weight"][p]
        out[f"{pre}.{ln}.bias"] = w[f"{pre}.{ln}.bias"][p]
    return out
