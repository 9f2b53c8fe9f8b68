"""Needs: the exact list of correlated randomness an online phase will consume.

``plan(model, shapes)`` produces a ``Needs``; the dealer makes material for it; both
parties consume it strictly in this order. An item is a kind plus public shapes and
attributes; its key (scope and shapes) is checked at every use, so a party that drifts
from the plan fails loudly instead of consuming the wrong material.

Kinds (shapes are public):
  bilinear  a_shape, b_shape, out_shape, op ("linear" | "matmul" | "matmul_t" | "hadamard"
            | "conv2d"), stride, padding, const (weight id, or "" for a product of two
            activations), optionally cached (id of a cached tensor, e.g. a KV cache, whose
            rows keep a shared-only constant-operand mask; b is then that mask)
  square    shape
  mul       shape
  trunc     shape, frac_bits
  dcf       shape, bits, drop, relu (0: sign only, 1: ReLU): an FSS comparison key
  bitdecomp shape, bits: AND triples and a conversion bit for a bit-decomposition sign test
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

KINDS = ("bilinear", "square", "mul", "trunc", "dcf", "bitdecomp")


@dataclass(frozen=True)
class Need:
    kind: str
    scope: str
    attrs: tuple  # sorted (name, value) pairs; values are ints, strings or int tuples

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown material kind {self.kind!r}; known: {KINDS}")

    @classmethod
    def make(cls, kind: str, scope: str, **attrs) -> "Need":
        norm = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                            for k, v in attrs.items()))
        return cls(kind, scope, norm)

    def get(self, name: str, default=KeyError):
        for k, v in self.attrs:
            if k == name:
                return v
        if default is not KeyError:
            return default
        raise KeyError(f"{self.kind} need has no attribute {name!r}")

    def describe(self) -> str:
        return f"{self.kind}@{self.scope}{dict(self.attrs)}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "scope": self.scope,
                "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs}}

    @classmethod
    def from_json(cls, d: dict) -> "Need":
        return cls.make(d["kind"], d["scope"], **d["attrs"])


@dataclass(frozen=True)
class Needs:
    """Items for one inference, repeated ``inferences`` times; constants made once."""

    items: tuple[Need, ...]
    constants: tuple[tuple[str, tuple[int, ...]], ...] = field(default=())  # (weight id, shape)
    inferences: int = 1

    def __len__(self) -> int:
        return len(self.items) * self.inferences

    def at(self, index: int) -> Need:
        return self.items[index % len(self.items)]

    def to_json(self) -> dict:
        return {"items": [n.to_json() for n in self.items],
                "constants": [[k, list(s)] for k, s in self.constants],
                "inferences": self.inferences}

    @classmethod
    def from_json(cls, d: dict) -> "Needs":
        try:
            return cls(tuple(Need.from_json(n) for n in d["items"]),
                       tuple((k, tuple(s)) for k, s in d["constants"]), int(d["inferences"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed needs description: {exc}") from None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def with_inferences(self, n: int) -> "Needs":
        if n < 1:
            raise ValueError(f"inferences must be >= 1, got {n}")
        return Needs(self.items, self.constants, n)
