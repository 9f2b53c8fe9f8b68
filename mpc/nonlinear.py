"""Comparison-based protocols on shares: sign test, ReLU, select.

Bits are arithmetic shares of an integer 0/1 (ring scale 1, not fixed point), wrapped in
``Bit`` so that they are not mistaken for fixed-point values.

  ltz(x)            [x < 0]; fss: 1 round, 8 B/element each way; bitdecomp: see mpc.bitdecomp
  relu(x)           fss: x (1 - [x < 0]) in the same single round (8 B/element each way);
                    Circa when ``relu_drop_bits`` > 0; bitdecomp: sign test + 1 product
  select(b, x, y)   y + b (x - y): one Beaver product of a bit and a value, no truncation
                    (1 round, 16 B/element each way)
Leaks: nothing (every opening is masked by fresh dealer randomness).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpc import bitdecomp, compare, protocol
from protocols.config import CompareConfig
from protocols.needs import Need


@dataclass
class Bit:
    """Shares of an integer bit (0/1), or a meta tensor while planning."""

    share: torch.Tensor

    @property
    def shape(self):
        return self.share.shape


def sign_need(scope: str, shape, cfg: CompareConfig, relu: bool) -> Need:
    shape = tuple(shape)
    if cfg.method == "fss":
        return Need.make("dcf", scope, shape=shape, bits=cfg.bits,
                         drop=cfg.relu_drop_bits if relu else 0, relu=int(relu))
    return Need.make("bitdecomp", scope, shape=shape, bits=cfg.bits)


def plan_relu(scope: str, shape, cfg: CompareConfig) -> list[Need]:
    if cfg.method == "fss":
        return [sign_need(scope, shape, cfg, True)]
    return [sign_need(scope, shape, cfg, False), Need.make("mul", scope, shape=tuple(shape))]


def ltz(party, x: torch.Tensor, cfg: CompareConfig, scope: str) -> Bit:
    need = sign_need(scope, x.shape, cfg, relu=False)
    m = party.take(need)
    flat = x.reshape(-1)
    if cfg.method == "fss":
        c = protocol.open_value(party, f"{scope}.cmp", flat + m["r"])
        bit, _ = compare.evaluate(party.index, need, m, c, relu_x=False)
    else:
        bit = bitdecomp.sign_bit(party, flat, need, m, scope)
    return Bit(bit.reshape(x.shape))


def select(party, bit: Bit, x: torch.Tensor, y: torch.Tensor, scope: str) -> torch.Tensor:
    """x where the bit is 1, else y (exact: the bit is an integer, so no truncation)."""
    return y + protocol.mul(party, bit.share, x - y, scope)


def relu(party, x: torch.Tensor, cfg: CompareConfig, scope: str) -> torch.Tensor:
    if cfg.method != "fss":
        neg = ltz(party, x, cfg, scope)
        keep = -neg.share + (1 if party.index == 0 else 0)
        return protocol.mul(party, keep, x, scope)
    need = sign_need(scope, x.shape, cfg, relu=True)
    m = party.take(need)
    flat = x.reshape(-1)
    c = protocol.open_value(party, f"{scope}.relu", flat + m["r"])
    _, out = compare.evaluate(party.index, need, m, c, relu_x=True)
    return out.reshape(x.shape)
