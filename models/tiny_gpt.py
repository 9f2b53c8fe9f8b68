"""The trained retrieval decoder (``tiny-gpt``) as a model spec, and its decoding contract.

Input (the client's private input): the right-aligned prompt rows of a public bucket,
token one-hots and position one-hots side by side, (bucket, vocab + ctx); see
``models.decoding``. Buckets are multiples of 16 up to the context, so the server learns
the prompt length rounded up to 16, plus the number of tokens generated (both public
session parameters). ``forward`` gives the logits of every prompt row (no cache); a
session generates through ``TinyGptDecoder`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.decoding import decode, prompt_length, prompt_rows, step_rows
from models.gpt import GptConfig, forward, gpt_arch, gpt_params
from models.spec import WEIGHTS_DIR, ModelSpec
from models.train_tiny_gpt import CFG

BUCKET_STEP = 16
BUCKETS = tuple(range(BUCKET_STEP, CFG.ctx + 1, BUCKET_STEP))
# Largest |logit error| of mpc (f = 16, default comparisons) against exact float64 we
# allow; measured up to 0.094 on prompts of 60 tokens (tests/models/test_private_decoding).
LOGIT_ERROR_BUDGET = 0.25
PREFILL_CHUNK = 128      # public: prefill runs in chunks of this many rows (bounded memory)


@dataclass(frozen=True)
class TinyGptDecoder:
    cfg: GptConfig
    chunk: int = PREFILL_CHUNK

    def split(self, ops, x):
        """(token rows, position rows) of an input (1, n, vocab + ctx)."""
        v = self.cfg.vocab
        return ops.narrow(x, -1, 0, v), ops.narrow(x, -1, v, self.cfg.ctx)

    def encode_prompt(self, prompt_ids, bucket: int) -> torch.Tensor:
        """Client side: the input (1, bucket, vocab + ctx) of a prompt."""
        toks, pos, _ = prompt_rows(prompt_ids, bucket, self.cfg)
        return torch.cat([toks, pos], -1)

    def prompt_length(self, x: torch.Tensor) -> int:
        """Client side: the private prompt length of an input, checked for shape."""
        v = self.cfg.vocab
        n = prompt_length(x[..., :v])
        want = torch.zeros(x.shape[1], self.cfg.ctx, dtype=x.dtype)
        want[x.shape[1] - n + torch.arange(n), torch.arange(n)] = 1
        if not torch.equal(x[0, :, v:], want):
            raise ValueError("the position rows must be one-hot 0..len-1 on the prompt rows")
        if not bool(((x[0, :, :v] == 0) | (x[0, :, :v] == 1)).all()) or \
                not bool((x[0, x.shape[1] - n:, :v].sum(-1) == 1).all()):
            raise ValueError("the token rows must be one-hot")
        return n

    def step_input(self, token: int, position: int):
        return step_rows(token, position, self.cfg)

    def run(self, ops, x, new_tokens: int, *, emit, feed, observe=None, on_token=None,
            eviction=None) -> list:
        """Greedy decoding; ``eviction``: a ``KvConfig`` (None or "full": the whole cache)."""
        from models.kv_eviction import make_policy
        toks, pos = self.split(ops, x)
        return decode(ops, toks, pos, new_tokens, cfg=self.cfg, emit=emit, feed=feed,
                      chunk=self.chunk, observe=observe, on_token=on_token,
                      policy=make_policy(eviction))


def _forward(ops, x):
    toks = ops.narrow(x, -1, 0, CFG.vocab)
    pos = ops.narrow(x, -1, CFG.vocab, CFG.ctx)
    return forward(ops, toks, pos, None, cfg=CFG)


TINY_GPT = ModelSpec(
    name="tiny-gpt", input_shape=(BUCKETS[-1], CFG.vocab + CFG.ctx), params=gpt_params(CFG),
    forward=_forward, weights_file=WEIGHTS_DIR / "tiny-gpt.safetensors", task="generation",
    seq_buckets=BUCKETS, decoder=TinyGptDecoder(CFG), notes={"ee": gpt_arch(CFG)},
    input_range=(0.0, 1.0))
