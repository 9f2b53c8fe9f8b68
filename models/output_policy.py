"""Output policy: what the client may learn of each inference, enforced inside the protocol.

Full logits help model extraction (and every query helps: see ``server.budget`` for the
per-client query budget). So the server may reveal less than the model computes. The
policy (``output.policy`` / ``output.k`` in ``protocols.config.OutputConfig``, in the
config digest, so both parties agree before anything private moves) wraps the model's
forward: after the model's own forward, still on the backend's values (floats, shares,
CrypTen tensors), it computes

  label   the one-hot of the argmax, shape (..., n): ``Ops.argmax``, i.e. a tree of
          pairwise maxima (n - 1 ReLUs in ceil(log2 n) rounds) and one batched sign test
          [y_i < max] (1 round with fss);
  topk    the k one-hot rows of the k largest entries, in descending order, shape
          (..., k, n): k rounds of the above; after each, the found entries are pushed
          down by a public constant P (y - P * onehot, computed exactly as
          y - (P - P * [y_i < max]), no truncation), so the next round finds the next one;
  full    the model's output as it is (logits; an embedding's vector).

and only that is revealed, to the client. The family's reveal step is unchanged: under
``mpc``, ``he``, ``hybrid`` and ``crypten`` the policy runs on shares before the reveal,
so the client cannot recover the logits (the opened value is a function of the label, or
of the top-k indices, alone; tested); under ``plaintext`` the server computes it in the
clear and sends only the one-hot.

"auto" is what the task needs: a classifier -> label; an embedding model -> full (the task
needs the vector); a decoder -> its generated tokens (decoders already open only each
step's argmax one-hot). Refused with a clear error: label/topk for an embedding model (an
argmax of an embedding means nothing), full/topk for a decoder (its logits never leave
the protocol), and label/topk under ``ee``: the host never sees outputs in the clear, the
key holder decodes them, so the host cannot enforce a policy against its clients.

Communication (``mpc``, fss, 10 classes, batch 1, per party): label adds 5 rounds and
152 bytes online and 21 KiB of comparison keys offline; top-3 adds 15 rounds, 456 bytes
and 63 KiB (measured on digits-mlp). The reveal itself is as large as the output it opens.

Leaks: label: the index of the largest output, as a one-hot; an exact tie (to the ulp)
marks every tied position, so it reveals the tie. topk: the indices of the k largest, in
order (ties as for label: tied entries share a row and are pushed down together), never
the scores. Nothing more to the server (the policy is public configuration).
P = 2^(min(compare.bits - 3, 30) - frac_bits) (2^14 by default): at most an eighth of the
comparison range and inside the fixed-point encoding range, so outputs must stay below P
in magnitude for top-k's comparisons to hold (digits logits: below 30).
"""

from __future__ import annotations

import dataclasses

import torch

from models.spec import ModelSpec
from protocols.config import Config, OutputConfig
from protocols.ops import TorchOps


class OutputPolicyError(ValueError):
    """A policy that this model, task or protocol cannot serve."""


def task_of(spec: ModelSpec) -> str:
    return "generation" if getattr(spec, "decoder", None) is not None else spec.task


def resolve(spec: ModelSpec, out: OutputConfig, family: str | None = None) -> str:
    """What leaves the protocol: "label", "topk", "full" or (a decoder) "tokens"."""
    task = task_of(spec)
    policy = out.policy
    if task == "generation":
        if policy not in ("auto", "label"):
            raise OutputPolicyError(
                f"{spec.name} is a decoder: it reveals only the generated tokens (each step's "
                f"argmax); output.policy={policy!r} is not available (use 'auto' or 'label')")
        return "tokens"
    if task == "embedding":
        if policy not in ("auto", "full"):
            raise OutputPolicyError(
                f"{spec.name} is an embedding model: its task needs the vector; "
                f"output.policy={policy!r} applies to classifiers (use 'auto' or 'full')")
        return "full"
    resolved = "label" if policy == "auto" else policy
    if family == "ee" and resolved in ("label", "topk"):
        raise OutputPolicyError(
            f"output.policy={resolved!r} cannot be enforced under ee: the host never sees "
            "outputs in the clear and the key holder decodes them; ee serves full outputs")
    if resolved == "topk":
        n = output_width(spec)
        if n is not None and not 1 <= out.k < n:
            raise OutputPolicyError(f"output.k={out.k} must lie in [1, {n - 1}] for "
                                    f"{spec.name}'s {n} outputs")
    return resolved


def describe(spec: ModelSpec, config: Config, family: str | None = None) -> str:
    """The policy as records state it: "label", "topk:3", "full" or "tokens"."""
    r = resolve(spec, config.output, family)
    return f"topk:{config.output.k}" if r == "topk" else r


def push_constant(config: Config) -> float:
    """P: at most an eighth of the comparison range, so y - P (even y - 2P, after a tie)
    still compares correctly against the rest, and encodable in fixed point (``mpc.fixed``:
    |x| < 2^(31 - frac_bits))."""
    return 2.0 ** (min(config.compare.bits - 3, 30) - config.fixed.frac_bits)


def output_width(spec: ModelSpec) -> int | None:
    """The last dimension of a classifier's output, from shapes only (meta tensors)."""
    try:
        ops = TorchOps({k: torch.empty(s, device="meta") for k, s in spec.params.items()},
                       device="meta", exact=True)
        y = spec.forward(ops, torch.empty((1,) + tuple(spec.input_shape), device="meta",
                                          dtype=torch.float64))
        return int(y.shape[-1])
    except Exception:  # noqa: BLE001 - a model that cannot run on meta tensors: checked online
        return None


def apply(spec: ModelSpec, config: Config, family: str | None = None) -> ModelSpec:
    """``spec`` with its forward followed by the configured policy (the same spec where
    the policy reveals what the model outputs: full, an embedding, a decoder's tokens)."""
    policy = resolve(spec, config.output, family)
    if policy not in ("label", "topk"):
        return spec
    return with_policy(spec, policy, config.output.k, push_constant(config))


def with_policy(spec: ModelSpec, policy: str, k: int = 1, push: float = 2.0 ** 14) -> ModelSpec:
    """``spec`` whose forward reveals only ``policy`` ("label" or "topk") of its output.
    The architecture digest is unchanged (the policy is agreed in the config digest);
    ``notes["output_policy"]`` says what was applied (a worker process re-applies it)."""
    if policy not in ("label", "topk"):
        raise OutputPolicyError(f"with_policy takes 'label' or 'topk', not {policy!r}")
    base = spec.forward

    def forward(ops, x):
        y = base(ops, x)
        with ops.scope("output_policy"):
            return label(ops, y) if policy == "label" else top_k(ops, y, k, push)

    note = {"policy": policy, "k": k if policy == "topk" else 1, "push": push}
    return dataclasses.replace(spec, forward=forward,
                               notes={**spec.notes, "output_policy": note})


def label(ops, y):
    """One-hot (0.0/1.0) of the argmax over the last dimension."""
    return ops.argmax(y)


def top_k(ops, y, k: int, push: float):
    """(..., k, n): row i is the one-hot of the i-th largest entry of y (..., n)."""
    s = tuple(ops.shape(y))
    n = s[-1]
    if not 1 <= k < n:
        raise OutputPolicyError(f"top-k with k={k} needs 1 <= k < {n}")
    rows = []
    for i in range(k):
        top = ops.max_last(y)                                       # (..., 1)
        below = ops.ltz(ops.sub(y, top))                            # [y_i < max]
        onehot = ops.add_public(ops.neg(ops.bit_value(below)), 1.0)
        rows.append(ops.reshape(onehot, s[:-1] + (1, n)))
        if i + 1 < k:                                               # y - P * onehot, exactly
            pushed = ops.add_public(ops.neg(ops.bit_scale(below, push)), push)
            y = ops.sub(y, pushed)
    return rows[0] if k == 1 else ops.cat(rows, len(s) - 1)


def labels_of(y: torch.Tensor) -> list:
    """A revealed output as class indices: (B,) for a label, (B, k) for top-k."""
    return y.argmax(-1).tolist()
