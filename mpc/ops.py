"""MpcOps: the Ops contract on two-party shares, and PlanOps, which records its Needs.

Both parties run the same model code through ``MpcOps`` in lockstep; every product takes
its material from the store in plan order. ``PlanOps`` runs the same model code on shapes
only and records exactly the items ``MpcOps`` will take, built by the same functions, so
plan and use cannot drift apart (and the store checks every item anyway).

Costs per op (each party sends; n = elements of the input, 8 bytes each):
  linear/conv2d with a server weight: open X - A (1 round, n) + truncation (1 round, out)
  square: 1 round (n) + truncation (1 round, n)
  mul: 1 round (2n) + truncation; matmul of activations: 1 round (n_x + n_y) + truncation
  mul_public: truncation only (1 round); add/sub/neg/add_public/reshape/sum: local.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpc import cached, fixed, nonlinear, protocol
from mpc.nonlinear import Bit
from mpc.protocol import CLIENT, SERVER, Party
from protocols.metering import Meter
from protocols.config import CompareConfig
from protocols.needs import Need
from protocols.ops import OperatorArithmetic, Ops, TensorStructure


@dataclass
class WeightShare:
    """A server layer as each party holds it. Client: the masked weight F = W - B only.
    Server: W, its mask B is implicit (F is what it opened), and the bias."""

    masked: torch.Tensor                 # F (ring, scale 2^f), both parties
    weight: torch.Tensor | None = None   # W (ring), server only
    bias: torch.Tensor | None = None     # bias (ring, scale 2^2f), server only


# -- need builders shared by MpcOps and PlanOps ----------------------------------------------
def linear_need(scope, x_shape, w_shape, layer):
    out = tuple(x_shape[:-1]) + (w_shape[0],)
    return Need.make("bilinear", scope, op="linear", a_shape=tuple(x_shape),
                     b_shape=tuple(w_shape), out_shape=out, const=f"{layer}.weight",
                     stride=1, padding=0), out


def conv_need(scope, x_shape, w_shape, layer, stride, padding):
    out = tuple(F.conv2d(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"),
                         stride=stride, padding=padding).shape)
    return Need.make("bilinear", scope, op="conv2d", a_shape=tuple(x_shape),
                     b_shape=tuple(w_shape), out_shape=out, const=f"{layer}.weight",
                     stride=stride, padding=padding), out


def hadamard_need(scope, x_shape, w_shape, layer):
    return Need.make("bilinear", scope, op="hadamard", a_shape=tuple(x_shape),
                     b_shape=tuple(w_shape), out_shape=tuple(x_shape), const=f"{layer}.weight",
                     stride=1, padding=0), tuple(x_shape)


def matmul_need(scope, x_shape, y_shape):
    out = tuple(torch.matmul(torch.empty(x_shape, device="meta"),
                             torch.empty(y_shape, device="meta")).shape)
    return Need.make("bilinear", scope, op="matmul", a_shape=tuple(x_shape),
                     b_shape=tuple(y_shape), out_shape=out, const="", stride=1, padding=0), out


class _ScopedOps(TensorStructure, Ops):
    def __init__(self, meter: Meter | None):
        self.meter = meter
        self._scopes: list[str] = []

    @property
    def _scope(self) -> str:
        return ".".join(self._scopes) or "root"

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scopes.append(name)
        cm = self.meter.in_scope(name) if self.meter is not None else contextlib.nullcontext()
        try:
            with cm:
                yield
        finally:
            self._scopes.pop()



class MpcOps(OperatorArithmetic, _ScopedOps):
    """Ops on shares (int64 ring tensors) for one party (add and sub of shares are local:
    the operators of OperatorArithmetic; add_weight is its own)."""

    name = "mpc"

    def __init__(self, party: Party, weights: dict[str, WeightShare],
                 additive: dict[str, torch.Tensor] | None = None, generation: int = 0):
        super().__init__(party.channel.meter)
        self.party = party
        self.generation = generation        # which run of the session (keys cached tensors)
        self.weights = weights
        self.additive = additive or {}      # server: encoded tensors added to its share
        self.f = party.frac_bits

    def _layer(self, layer: str) -> WeightShare:
        try:
            return self.weights[layer]
        except KeyError:
            raise KeyError(f"no weights for layer {layer!r}") from None

    def _trunc(self, z):
        return protocol.truncate(self.party, z, self._scope)

    def _with_bias(self, z, w: WeightShare, view):
        if self.party.index == SERVER and w.bias is not None:
            z = z + w.bias.reshape(view)
        return self._trunc(z)

    def linear(self, x, layer):
        w = self._layer(layer)
        need, _ = linear_need(self._scope, x.shape, w.masked.shape, layer)
        z = protocol.bilinear_with_weight(self.party, x, need, w.weight, w.masked, self._scope)
        return self._with_bias(z, w, (-1,))

    def conv2d(self, x, layer, *, stride=1, padding=0):
        w = self._layer(layer)
        need, _ = conv_need(self._scope, x.shape, w.masked.shape, layer, stride, padding)
        z = protocol.bilinear_with_weight(self.party, x, need, w.weight, w.masked, self._scope)
        return self._with_bias(z, w, (-1, 1, 1))

    def affine(self, x, layer):
        w = self._layer(layer)
        need, _ = hadamard_need(self._scope, x.shape, w.masked.shape, layer)
        z = protocol.bilinear_with_weight(self.party, x, need, w.weight, w.masked, self._scope)
        return self._with_bias(z, w, (-1,))

    def add_weight(self, x, name, rows=None):
        if self.party.index != SERVER:
            return x + torch.zeros((), dtype=torch.int64)
        try:
            p = self.additive[name]
        except KeyError:
            raise KeyError(f"no weight {name!r}") from None
        return x + (p if rows is None else p[:rows])

    def neg(self, x):
        return -x

    def mul(self, x, y):
        return self._trunc(protocol.mul(self.party, x, y, self._scope))

    def square(self, x):
        return self._trunc(protocol.square(self.party, x, self._scope))

    def matmul(self, x, y, integer=False):
        need, _ = matmul_need(self._scope, x.shape, y.shape)
        z = protocol.bilinear_shared(self.party, x, y, need, self._scope)
        return z if integer else self._trunc(z)

    def cache_append(self, entries):
        return protocol.cache_append(self.party, entries, self.generation, self._scope)

    def matmul_cached(self, x, y, transpose=False, integer=False):
        need, _ = cached.cached_need(self._scope, x.shape, y, transpose)
        z = protocol.bilinear_cached(self.party, x, y, need, self._scope, self.generation)
        return z if integer else self._trunc(z)

    def bit_count(self, bit):
        return bit.share

    def cached_rows(self, y, start, count, cluster=1):
        return cached.view(y, start, count, cluster)

    def cached_value(self, y):
        return y.share

    def mul_public(self, x, c):
        c = torch.as_tensor(c, dtype=torch.float64)
        if bool((c == c.round()).all()):
            return x * c.to(torch.int64)
        z = x * fixed.encode(c, self.f)
        return self._trunc(z)

    def add_public(self, x, c):
        if self.party.index == CLIENT:
            c = torch.as_tensor(c, dtype=torch.float64)
            return x + fixed.encode(c, self.f)
        return x + torch.zeros((), dtype=torch.int64)

    def sum(self, x, dim, keepdim=False):
        return x.sum(dim=dim, keepdim=keepdim)

    def relu(self, x):
        return nonlinear.relu(self.party, x, self.party.compare, self._scope)

    def ltz(self, x):
        return nonlinear.ltz(self.party, x, self.party.compare, self._scope)

    def select(self, bit, x, y):
        x, y = torch.broadcast_tensors(x, y)
        return nonlinear.select(self.party, _bit_like(bit, x), x, y, self._scope)

    def bit_value(self, bit):
        return bit.share << self.f

    def bit_scale(self, bit, coeffs):
        return bit.share * fixed.encode(torch.as_tensor(coeffs, dtype=torch.float64), self.f)


def _bit_like(bit: Bit, x) -> Bit:
    return bit if tuple(bit.shape) == tuple(x.shape) else Bit(bit.share.expand(x.shape))


class PlanOps(_ScopedOps):
    """Runs a model on shapes only (meta tensors) and records the Needs it will consume."""

    name = "plan"

    def __init__(self, param_shapes: dict[str, tuple[int, ...]], frac_bits: int,
                 compare: CompareConfig | None = None):
        super().__init__(None)
        self.param_shapes = param_shapes
        self.frac_bits = frac_bits
        self.compare = compare or CompareConfig()
        self.items: list[Need] = []
        self.constants: dict[str, tuple[int, ...]] = {}
        self.const_scopes: dict[str, str] = {}          # where each constant is first used

    @staticmethod
    def tensor(shape):
        return torch.empty(tuple(shape), dtype=torch.int64, device="meta")

    def _trunc(self, shape):
        self.items.append(Need.make("trunc", self._scope, shape=tuple(shape),
                                    frac_bits=self.frac_bits))
        return self.tensor(shape)

    def _weight(self, layer):
        key = f"{layer}.weight"
        if key not in self.param_shapes:
            raise KeyError(f"no weights for layer {layer!r}")
        self.constants.setdefault(key, tuple(self.param_shapes[key]))
        self.const_scopes.setdefault(key, self._scope)
        return self.param_shapes[key]

    def linear(self, x, layer):
        need, out = linear_need(self._scope, x.shape, self._weight(layer), layer)
        self.items.append(need)
        return self._trunc(out)

    def conv2d(self, x, layer, *, stride=1, padding=0):
        need, out = conv_need(self._scope, x.shape, self._weight(layer), layer, stride, padding)
        self.items.append(need)
        return self._trunc(out)

    def affine(self, x, layer):
        need, out = hadamard_need(self._scope, x.shape, self._weight(layer), layer)
        self.items.append(need)
        return self._trunc(out)

    def add_weight(self, x, name, rows=None):
        if name not in self.param_shapes:
            raise KeyError(f"no weight {name!r}")
        shape = list(self.param_shapes[name])
        if rows is not None:
            shape[0] = rows
        return self.tensor(torch.broadcast_shapes(x.shape, tuple(shape)))

    def add(self, x, y):
        return self.tensor(torch.broadcast_shapes(x.shape, y.shape))

    def sub(self, x, y):
        return self.add(x, y)

    def neg(self, x):
        return x

    def mul(self, x, y):
        self.items.append(protocol.mul_need(self._scope, x.shape, y.shape))
        return self._trunc(x.shape)

    def square(self, x):
        self.items.append(Need.make("square", self._scope, shape=tuple(x.shape)))
        return self._trunc(x.shape)

    def matmul(self, x, y, integer=False):
        need, out = matmul_need(self._scope, x.shape, y.shape)
        self.items.append(need)
        return self.tensor(out) if integer else self._trunc(out)

    def cache_append(self, entries):
        out = []
        for key, old, new, dim in entries:
            grown = new if old is None else torch.cat([old.share, new], dim)
            out.append(cached.CachedShare(key, dim, grown, grown, grown))
        return out

    def matmul_cached(self, x, y, transpose=False, integer=False):
        need, out = cached.cached_need(self._scope, x.shape, y, transpose)
        self.items.append(need)
        return self.tensor(out) if integer else self._trunc(out)

    def bit_count(self, bit):
        return self.tensor(bit.shape)

    def cached_rows(self, y, start, count, cluster=1):
        return cached.view(y, start, count, cluster)

    def cached_value(self, y):
        return y.share

    def mul_public(self, x, c):
        c = torch.as_tensor(c, dtype=torch.float64)
        shape = torch.broadcast_shapes(x.shape, c.shape)
        return self.tensor(shape) if bool((c == c.round()).all()) else self._trunc(shape)

    def add_public(self, x, c):
        return x

    def sum(self, x, dim, keepdim=False):
        return x.sum(dim=dim, keepdim=keepdim)

    def relu(self, x):
        self.items.extend(nonlinear.plan_relu(self._scope, x.shape, self.compare))
        return self.tensor(x.shape)

    def ltz(self, x):
        self.items.append(nonlinear.sign_need(self._scope, x.shape, self.compare, relu=False))
        return Bit(self.tensor(x.shape))

    def select(self, bit, x, y):
        shape = torch.broadcast_shapes(x.shape, y.shape)
        self.items.append(Need.make("mul", self._scope, shape=tuple(shape)))
        return self.tensor(shape)

    def bit_value(self, bit):
        return self.tensor(bit.shape)

    def bit_scale(self, bit, coeffs):
        return self.tensor(torch.broadcast_shapes(bit.shape, torch.as_tensor(coeffs).shape))
