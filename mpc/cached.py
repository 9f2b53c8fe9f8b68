"""Cached operands: tensors written row by row (a KV cache) whose rows keep a shared-only
constant-operand mask for every later product.

Masks. Row r of cached tensor ``key`` in run g (the g-th inference of the session) has
mask B_r = B_r^0 + B_r^1, party p expanding B_r^p from its own seed on the PRG stream of
"g/key" (elements r*m .. r*m + m - 1, m the row size). Neither party holds B: the dealer,
who knows both seeds, is the only one who can form it. Rows are never rewritten; the store
refuses a second opening of a row (``mark_opened``), which would reveal K_new - K_old.

Protocols:
  append     open F_r = X_r - B_r for the new rows (1 round; each party sends the rows'
             elements * 8 bytes; all entries of one call share the round).
  product    op(X, Y) for a fresh X and cached Y (op = X @ Y or X @ Y^T): open E = X - A
             (1 round; numel(X) * 8 bytes each way), then
             share_p = op(E, B^p) + op(A^p, F) + C^p  (+ op(E, F) on party 0),
             with C = op(A, B) from the dealer (party 1's correction, out-sized).
So a decode step opens only the new query and rows, never the whole cache.
Leaks: nothing. F_r is X_r masked by a uniform B_r that neither party knows; E is
masked by a fresh A.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from mpc import prg
from protocols.needs import Need

CACHE_STREAM_BIT = 1 << 62
LABEL_CACHE = 8


def run_key(generation: int, key: str) -> str:
    return f"{generation}/{key}"


def _stream(full_key: str) -> int:
    return CACHE_STREAM_BIT | int.from_bytes(hashlib.sha256(full_key.encode()).digest()[:7], "big")


def mask_rows(seed: bytes, full_key: str, start: int, rows: int, shape, dim: int) -> torch.Tensor:
    """One party's mask share of rows [start, start + rows) along ``dim`` of a cached
    tensor whose other dimensions are those of ``shape``."""
    row_shape = tuple(s for i, s in enumerate(shape) if i != dim)
    m = 1
    for s in row_shape:
        m *= s
    flat = prg.expand_range(seed, _stream(full_key), LABEL_CACHE, start * m, rows * m)
    return torch.movedim(flat.reshape((rows,) + row_shape), 0, dim)


def dealer_mask(s0: bytes, s1: bytes, full_key: str, rows: int, shape, dim: int,
                memo: dict) -> torch.Tensor:
    """The full mask B of rows [0, rows), extended incrementally across items."""
    have = memo.get(("cached", full_key))
    start = 0 if have is None else have.shape[dim]
    if start < rows:
        new = mask_rows(s0, full_key, start, rows - start, shape, dim) + \
            mask_rows(s1, full_key, start, rows - start, shape, dim)
        have = new if have is None else torch.cat([have, new], dim)
        memo[("cached", full_key)] = have
    return have.narrow(dim, 0, rows)


@dataclass
class CachedShare:
    """One party's view of a cached tensor: its share X^p, the opened F = X - B, and its
    own mask share B^p (rows along ``dim``). A view (``view``) holds rows
    [start, start + count) of the tensor, grouped into clusters of ``cluster`` rows."""

    key: str
    dim: int
    share: torch.Tensor
    masked: torch.Tensor
    mask: torch.Tensor
    start: int = 0
    cluster: int = 0           # 0: the whole tensor (appendable); >= 1: a view

    @property
    def shape(self):
        return self.share.shape

    @property
    def rows(self) -> int:
        return self.share.shape[self.dim]


def view(y: CachedShare, start: int, count: int, cluster: int = 1) -> CachedShare:
    """Rows [start, start + count) of a whole cached tensor, in clusters of ``cluster``."""
    if y.cluster:
        raise ValueError("a view of a view is not supported; view the whole cached tensor")
    if y.dim != y.share.dim() - 2 or count % cluster or start < 0 or start + count > y.rows:
        raise ValueError(f"bad view of {y.key}: rows [{start}, {start + count}) of {y.rows}, "
                         f"clusters of {cluster}")

    def cut(t):
        t = t.narrow(y.dim, start, count)
        return t if cluster == 1 else t.reshape(t.shape[:-2] + (count // cluster,
                                                                 cluster * t.shape[-1]))
    return CachedShare(y.key, y.dim, cut(y.share), cut(y.masked), cut(y.mask), start, cluster)


def view_mask(full: torch.Tensor, need: Need) -> torch.Tensor:
    """The dealer's B for a product with a (viewed) cached tensor, from the full mask."""
    dim, start, cluster = need.get("cached_dim"), need.get("row_start", 0), need.get("cluster", 0)
    if not cluster:
        return full
    shape = need.get("b_shape")
    count = shape[-2] * cluster
    return full.narrow(dim, start, count).reshape(shape)


def mask_rows_needed(need: Need) -> tuple[int, tuple[int, ...]]:
    """(rows of the full tensor the product's mask covers, the full tensor's row shape)."""
    shape, cluster = need.get("b_shape"), need.get("cluster", 0)
    if not cluster:
        return shape[need.get("cached_dim")], tuple(shape)
    count = shape[-2] * cluster
    full = tuple(shape[:-2]) + (count, shape[-1] // cluster)
    return need.get("row_start") + count, full


def cached_need(scope: str, x_shape, y, transpose: bool):
    """The bilinear item of x @ y (or x @ y^T) for a cached (or viewed) y, and its output
    shape. ``y``: anything with key, dim, shape, start and cluster."""
    yy = torch.empty(tuple(y.shape), device="meta")
    out = tuple(torch.matmul(torch.empty(tuple(x_shape), device="meta"),
                             yy.transpose(-1, -2) if transpose else yy).shape)
    extra = {"row_start": y.start, "cluster": y.cluster} if y.cluster else {}
    return Need.make("bilinear", scope, op="matmul_t" if transpose else "matmul",
                     a_shape=tuple(x_shape), b_shape=tuple(y.shape), out_shape=out,
                     const="", cached=y.key, cached_dim=y.dim, stride=1, padding=0,
                     **extra), out
