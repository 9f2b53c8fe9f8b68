"""A linear layer with the server's weights on shares, computed under CKKS (``he``).

Input: additive ring shares x = x_c + x_s (R, n). W (m, n) is cut into square d x d
blocks (``geometry`` picks d by a cost model: a narrower block packs more rows per
ciphertext, e.g. MiniLM's 1152 x 384 QKV as three 384-blocks packs 5 rows, not 1); rows
go side by side, ``per_ct`` per ciphertext.
  1. server -> client: x_s + r (ring), r a bounded mask (``he.convert``);
  2. client -> server: Enc(x + t) per (row group, column block), t = r / 2^f;
  3. the server subtracts t under encryption, multiplies each block (BSGS, ``he.matvec``),
     sums over column blocks, masks and re-randomises each (row group, row block) result
     (``he.convert``), and keeps -r' + bias as its share;
  4. server -> client: the masked ciphertexts; the client decrypts and rounds its share.
Communication: 3 messages in sequence (one ring vector, then the ciphertexts each way);
no dealer material. Leaks (statistical, declared in ``he.convert``): the client sees
x + t and W x + t', each element hidden with SIGMA = 26 bits; the server sees
ciphertexts and uniform shares only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sa
import torch

from he import convert
from he.keys import from_bytes, to_bytes
from he.matvec import EncodedMatrix, block, default_baby, encrypt_vector, matvec, replicate


MULT_S, ROT_S = 0.25e-3, 3e-3        # one multiply_plain, one rotation (N = 8192, measured)


@dataclass(frozen=True)
class Plan:
    m: int
    n: int
    d: int                 # square block side
    b: int                 # baby steps
    per_ct: int            # rows per ciphertext
    rows: int

    @property
    def row_blocks(self) -> int:
        return math.ceil(self.m / self.d)

    @property
    def col_blocks(self) -> int:
        return math.ceil(self.n / self.d)

    def groups(self) -> list[slice]:
        return [slice(i, min(i + self.per_ct, self.rows)) for i in range(0, self.rows, self.per_ct)]

    def seconds(self) -> float:
        """Estimated server time: every (group, row block, column block) product."""
        one = self.d * MULT_S + (self.b - 1 + math.ceil(self.d / self.b) - 1) * ROT_S
        return len(self.groups()) * self.row_blocks * self.col_blocks * one


def geometry(w_shape, rows: int, slots: int) -> Plan:
    """The cheapest block side among max(m, n), min(m, n) and the powers of two between."""
    m, n = w_shape
    lo, hi = min(m, n), max(m, n)
    sides = {hi, lo} | {1 << k for k in range(lo.bit_length(), hi.bit_length())}
    best = None
    for d in sorted(sides):
        b = default_baby(d)
        per_ct = slots // block(d, b)
        if per_ct < 1:
            continue
        plan = Plan(m, n, d, b, per_ct, rows)
        if best is None or plan.seconds() < best.seconds():
            best = plan
    if best is None:
        raise ValueError(f"he: no block of a {m}x{n} layer fits {slots} slots")
    return best


def positions(m: int, d: int, b: int, rows: int) -> np.ndarray:
    """Slot positions of the outputs of ``rows`` packed rows."""
    return np.concatenate([t * block(d, b) + np.arange(m) for t in range(rows)])


class BlockMatrix:
    """W's d x d blocks, each encoded for ``per_ct`` packed rows (server, offline)."""

    def __init__(self, w: np.ndarray, plan: Plan, params, context):
        self.plan = plan
        self.blocks = [[EncodedMatrix.encode(self._padded(w, i, j), params, context, plan.b,
                                             tokens=min(plan.rows, plan.per_ct))
                        for j in range(plan.col_blocks)] for i in range(plan.row_blocks)]

    def _padded(self, w, i, j):
        d = self.plan.d
        part = w[i * d:(i + 1) * d, j * d:(j + 1) * d]
        out = np.zeros((d, d))
        out[:part.shape[0], :part.shape[1]] = part
        return out


def send_ct(channel, tag, ct):
    channel.send(tag, torch.frombuffer(bytearray(to_bytes(ct)), dtype=torch.uint8))


def recv_ct(channel, tag, context):
    data = channel.recv(tag)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError(f"he: {tag} must be serialised ciphertext bytes")
    return from_bytes(sa.Ciphertext, context, bytes(data.numpy()), f"ciphertext {tag}")


def _width(total: int, d: int, i: int) -> int:
    return min(d, total - i * d)


def client_linear(party, keys, x_c: torch.Tensor, w_shape, scope: str) -> torch.Tensor:
    f = party.frac_bits
    ch = party.channel
    plan = geometry(w_shape, x_c.shape[0], keys.params.slots)
    d, b = plan.d, plan.b
    masked = ch.recv(f"{scope}.he.masked")
    if tuple(masked.shape) != tuple(x_c.shape) or masked.dtype != torch.int64:
        raise ValueError(f"he: masked share of shape {tuple(masked.shape)}, expected "
                         f"{tuple(x_c.shape)}")
    for g, rows in enumerate(plan.groups()):
        for j in range(plan.col_blocks):
            cols = slice(j * d, (j + 1) * d)
            ct = convert.shares_to_ckks_client(keys, x_c[rows, cols], masked[rows, cols], f,
                                               lambda z: encrypt_vector(keys, z, d, b))
            send_ct(ch, f"{scope}.he.input.{g}.{j}", ct)
    out = []
    for g, rows in enumerate(plan.groups()):
        k = rows.stop - rows.start
        parts = []
        for i in range(plan.row_blocks):
            ct = recv_ct(ch, f"{scope}.he.output.{g}.{i}", keys.context)
            m_i = _width(plan.m, d, i)
            parts.append(convert.ckks_to_shares_client(keys, ct, positions(m_i, d, b, k), f)
                         .reshape(k, m_i))
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out)


def server_linear(party, server_keys, x_s: torch.Tensor, mat: BlockMatrix, bias,
                  scope: str) -> torch.Tensor:
    f = party.frac_bits
    ch = party.channel
    plan = mat.plan
    d, b, slots = plan.d, plan.b, server_keys.params.slots
    masked, r = convert.shares_to_ckks_server_mask(x_s, f)
    ch.send(f"{scope}.he.masked", masked)
    groups = plan.groups()
    cts = [[recv_ct(ch, f"{scope}.he.input.{g}.{j}", server_keys.context)
            for j in range(plan.col_blocks)] for g in range(len(groups))]
    ev = sa.Evaluator(server_keys.context)
    shares = []
    for g, rows in enumerate(groups):
        k = rows.stop - rows.start
        xs = [convert.shares_to_ckks_server_unmask(
            server_keys, ct, r[rows, j * d:(j + 1) * d], f,
            lambda v: replicate(v, d, b, slots)) for j, ct in enumerate(cts[g])]
        parts = []
        for i in range(plan.row_blocks):
            acc = None
            for j, x in enumerate(xs):
                y = matvec(server_keys, x, mat.blocks[i][j])
                if acc is None:
                    acc = y
                else:
                    ev.add_inplace(acc, y)
            m_i = _width(plan.m, d, i)
            out, share = convert.ckks_to_shares_server(server_keys, acc,
                                                       positions(m_i, d, b, k), f)
            send_ct(ch, f"{scope}.he.output.{g}.{i}", out)
            parts.append(share.reshape(k, m_i))
        shares.append(torch.cat(parts, dim=1))
    share = torch.cat(shares)
    return share if bias is None else share + bias
