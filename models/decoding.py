"""Greedy decoding written against Ops, and the client-side inputs it takes.

The prompt travels as a public bucket of ``n`` one-hot rows, right-aligned: padding
(all-zero rows) first, then the prompt's tokens, so the last row always predicts the next
token whatever the private length. Position rows are one-hot too (positions 0..len-1 on
the real rows, zero rows on padding), so the length stays private; the padded keys are
masked for every query by the rows' validity. Decoding then runs:

  prefill   the n rows, in public chunks of ``chunk`` rows against the growing KV cache,
            and the first token (meter scope "prefill")
  step t    (t >= 1, scope "decode") the previous token's row against the cache, then argmax of the last row's logits as a backend one-hot; ``emit`` turns it into
            the caller's token (under mpc: a reveal to the client, the only value opened);
            ``feed`` gives the next token and position rows (the client's private input)

Public: n, the number of new tokens, the chunk size. Private: the prompt, its length,
every generated token (known to the client only).
"""

from __future__ import annotations

from typing import Callable

import torch

from models.gpt import GptConfig, KVCache, forward, one_hot_rows


def prompt_rows(prompt_ids, bucket: int, cfg: GptConfig, dtype=torch.float64):
    """Client side: (tokens (1, bucket, V), positions (1, bucket, ctx)) of a right-aligned
    prompt, and the prompt length."""
    ids = [int(t) for t in prompt_ids]
    if not 1 <= len(ids) <= bucket:
        raise ValueError(f"prompt of {len(ids)} tokens does not fit the bucket of {bucket}")
    bad = [t for t in ids if not 0 <= t < cfg.vocab]
    if bad:
        raise ValueError(f"token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab})")
    pad = bucket - len(ids)
    toks = one_hot_rows([[-1] * pad + ids], cfg.vocab, dtype)
    pos = one_hot_rows([[-1] * pad + list(range(len(ids)))], cfg.ctx, dtype)
    return toks, pos, len(ids)


def prompt_length(tokens: torch.Tensor) -> int:
    """Client side: the length of a right-aligned one-hot prompt (1, bucket, V)."""
    real = tokens[0].sum(-1) != 0
    n = int(real.sum())
    if n == 0 or not bool(real[len(real) - n:].all()):
        raise ValueError("the prompt rows must be right-aligned: padding (zero rows) first, "
                         "then at least one token")
    return n


def step_rows(token: int, position: int, cfg: GptConfig, dtype=torch.float64):
    """Client side: the one-hot token and position rows (1, 1, ·) of one decode step."""
    if not 0 <= position < cfg.ctx:
        raise ValueError(f"position {position} outside the context {cfg.ctx}")
    return one_hot_rows([[token]], cfg.vocab, dtype), one_hot_rows([[position]], cfg.ctx, dtype)


def decode(ops, tokens, positions, new_tokens: int, *, cfg: GptConfig, emit: Callable,
           feed: Callable, chunk: int | None = None, observe: Callable | None = None,
           on_token: Callable | None = None, policy=None) -> list:
    """Greedy decoding of ``new_tokens`` tokens; returns what ``emit`` returned per step.

    ``tokens``/``positions``: backend values (1, n, V)/(1, n, ctx) of the prompt rows.
    ``emit(onehot)``: the argmax one-hot (1, 1, V) -> the caller's token (or None).
    ``feed(step, previous)``: -> backend values of the next (token row, position row).
    ``observe(logits)``: optional, sees each step's last-row logits (plaintext checks).
    ``on_token(step)``: optional, called as each token is emitted (timing).
    ``policy``: a KV eviction policy (``models.kv_eviction``) for the decode steps."""
    n = ops.shape(tokens)[1]
    if n + new_tokens - 1 > cfg.ctx:
        raise ValueError(f"{n} prompt rows + {new_tokens} new tokens exceed the context {cfg.ctx}")
    chunk = chunk or n
    cache = KVCache(cfg, policy, prompt_len=n)
    with ops.scope("prefill"):
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            logits = forward(ops, ops.narrow(tokens, 1, start, m),
                             ops.narrow(positions, 1, start, m), cache, cfg=cfg)
        out = [_next_token(ops, logits, emit, observe)]
        cache.finish_prefill(ops)
    if on_token is not None:
        on_token(0)
    return decode_steps(ops, cache, out, new_tokens, cfg=cfg, emit=emit, feed=feed,
                        observe=observe, on_token=on_token)


def decode_steps(ops, cache: KVCache, out: list, new_tokens: int, *, cfg: GptConfig,
                 emit: Callable, feed: Callable, observe: Callable | None = None,
                 on_token: Callable | None = None) -> list:
    """Decode steps len(out) .. new_tokens - 1 against a filled cache (scope "decode")."""
    for t in range(len(out), new_tokens):
        with ops.scope("decode"):
            logits = forward(ops, *feed(t, out[-1]), cache, cfg=cfg)
            out.append(_next_token(ops, logits, emit, observe))
        if on_token is not None:
            on_token(t)
    return out


def _next_token(ops, logits, emit, observe):
    with ops.scope("argmax"):
        last = ops.narrow(logits, 1, ops.shape(logits)[1] - 1, 1)
        if observe is not None:
            observe(last)
        return emit(ops.argmax(last))


def plain_decode(weights, prompt_ids, new_tokens: int, bucket: int, *, cfg: GptConfig,
                 chunk: int | None = None, ops=None, policy=None):
    """The same decoding on plain tensors (exact float64 unless ``ops`` is given).
    Returns (tokens, margins): each step's top-1 minus top-2 logit."""
    from protocols.ops import TorchOps
    ops = ops or TorchOps(weights, exact=True)
    toks, pos, length = prompt_rows(prompt_ids, bucket, cfg, ops.dtype)
    margins = []

    def feed(t, prev):
        return tuple(r.to(ops.dtype) for r in step_rows(prev, length + t - 1, cfg))

    def observe(last):
        top = torch.topk(last.reshape(-1).double(), 2).values
        margins.append(float(top[0] - top[1]))

    out = decode(ops, toks, pos, new_tokens, cfg=cfg, feed=feed, chunk=chunk, observe=observe,
                 policy=policy,
                 emit=lambda onehot: int(torch.argmax(onehot.reshape(-1))))
    return out, margins
