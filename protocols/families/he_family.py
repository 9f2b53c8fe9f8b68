"""``he``: CKKS for linear layers with the server's weights, 2PC for everything else.

Offline: the client makes CKKS keys (``he.keys``) and sends the public bundle (public key,
Galois keys for exactly the rotation steps the model's layers need); the server validates
it and encodes each weight matrix's diagonals. Both parties fetch dealer material for the
rest of the model (products, truncations, comparisons: ``mpc``); linear layers need none.
Online: the client's input becomes shares (x, 0); each linear layer runs ``he.layer``
(server share -> masked -> Enc -> W x -> masked shares); squares, ReLUs and the like run
on shares exactly as under ``mpc``; the server sends its output share to the client.
Communication per linear layer: one ring vector up to the client, then one ciphertext
each way per group of rows that fits a ciphertext, in 3 messages.
Layers: ``linear`` and ``conv2d`` (as its dense Toeplitz matrix) under CKKS; elementwise
weights (LayerNorm) and matrices too wide for a ciphertext (MiniLM's 30522-row embedding
lookup) run as under ``mpc``: their weights are opened once under constant-operand masks
and their products use dealer material. Decoders raise a clear error at plan time.
Leaks: to the server, nothing beyond the public shapes; to the client, the output, and for
every linear layer its input and output each masked by a bounded uniform mask (statistical
parameter SIGMA = 26 bits per element, ``he.convert``; |values| must stay <= 2^6).
Trust: semi-honest parties; CKKS at 128-bit security (``he.params``); a dealer that does
not collude with either party for the non-linear material and the 2PC-routed layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from he.keys import ClientKeys, ServerKeys, to_bytes
from he.layer import BlockMatrix, client_linear, geometry, server_linear
from he.matvec import block, default_baby, rotation_steps
from he.params import get_param_set
from mpc import fixed
from mpc.ops import MpcOps, PlanOps
from mpc.protocol import CLIENT, reveal_to
from protocols.families.base import Family, check_input
from protocols.families.secret_sharing import MpcClient, MpcServer
from protocols.needs import Needs

PARAM_SET = "n8192-d2"


class HePlanOps(PlanOps):
    """Plans the 2PC material; layers with server weights need none under ``he``. Records
    each such layer's matrix shape (a conv2d as its dense Toeplitz matrix), its row count
    and, for a conv2d, its geometry. Layers HE does not take run as under ``mpc``
    (constant-operand masks, dealer products): elementwise weights (LayerNorm) and matrices
    too wide for one ciphertext (the 30522-row word-embedding lookup)."""

    slots = get_param_set(PARAM_SET).slots

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.he_layers: dict[str, dict] = {}

    def _he_fits(self, m: int, n: int) -> bool:
        d = max(m, n)
        return block(d, default_baby(d)) <= self.slots

    def _shape(self, layer):
        key = f"{layer}.weight"
        if key not in self.param_shapes:
            raise KeyError(f"no weights for layer {layer!r}")
        return tuple(self.param_shapes[key])

    def linear(self, x, layer):
        w = self._shape(layer)
        if not self._he_fits(*w):
            return PlanOps.linear(self, x, layer)
        rows = 1
        for s in x.shape[:-1]:
            rows *= s
        self.he_layers[layer] = {"matrix": w, "rows": rows, "scope": self._scope}
        return self.tensor(tuple(x.shape[:-1]) + (w[0],))

    def conv2d(self, x, layer, *, stride=1, padding=0):
        w = self._shape(layer)
        out = F.conv2d(torch.empty(tuple(x.shape), device="meta"),
                       torch.empty(w, device="meta"), stride=stride, padding=padding).shape
        n_in = math.prod(x.shape[1:])
        n_out = math.prod(out[1:])
        self.he_layers[layer] = {"matrix": (n_out, n_in), "rows": x.shape[0], "scope": self._scope,
                                 "conv": {"in": tuple(x.shape[1:]), "out": tuple(out[1:]),
                                          "stride": stride, "padding": padding}}
        return self.tensor(tuple(out))



def toeplitz(weight: torch.Tensor, conv: dict) -> torch.Tensor:
    """A conv2d as the dense matrix (out numel, in numel) acting on flattened inputs."""
    n_in = math.prod(conv["in"])
    eye = torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + conv["in"])
    cols = F.conv2d(eye, weight.to(torch.float64), stride=conv["stride"], padding=conv["padding"])
    return cols.reshape(n_in, -1).t().contiguous()


def he_plan(spec, input_shape, config, inferences, ops_class=None, name="he"):
    if spec.decoder is not None:
        raise ValueError(f"{name}: decoders are not supported yet (use mpc)")
    ops = (ops_class or HePlanOps)(spec.params, config.fixed.frac_bits, config.compare)
    spec.forward(ops, PlanOps.tensor(input_shape))
    return Needs(tuple(ops.items), tuple(sorted(ops.constants.items())), inferences), ops.he_layers


class HeOps(MpcOps):
    """MpcOps whose layers in ``he_layers`` run under CKKS (``layer_fn``); the rest as
    under ``mpc`` with ``weights``."""

    name = "he"

    def __init__(self, party, weights, he_layers, layer_fn, additive=None):
        super().__init__(party, weights, additive)
        self._layer_fn = layer_fn
        self.he_layers = he_layers

    def linear(self, x, layer):
        if layer not in self.he_layers:
            return super().linear(x, layer)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        return self._layer_fn(flat, layer, self._scope).reshape(tuple(shape[:-1]) + (-1,))

    def conv2d(self, x, layer, *, stride=1, padding=0):
        y = self._layer_fn(x.reshape(x.shape[0], -1), layer, self._scope)
        return y.reshape((x.shape[0],) + self.he_layers[layer]["conv"]["out"])


class _HeRole:
    def _plan(self, ctx):
        needs, self.he_layers = he_plan(ctx.spec, ctx.input_shape, ctx.config, ctx.inferences)
        self.params = get_param_set(PARAM_SET)
        return needs

    def _steps(self):
        steps = set()
        for info in self.he_layers.values():
            plan = geometry(info["matrix"], info["rows"], self.params.slots)
            steps |= set(rotation_steps(plan.d, plan.b))
        return steps

    def _ops(self, layer_fn, additive=None):
        return HeOps(self.party, self.weights, self.he_layers, layer_fn, additive)


class HeClient(_HeRole, MpcClient):
    key_bytes = 0

    def storage_bytes(self) -> int:
        """The store plus the CKKS keys this client holds (secret, public, Galois)."""
        return super().storage_bytes() + self.key_bytes

    def peak_storage_bytes(self) -> int:
        return super().peak_storage_bytes() + self.key_bytes

    def offline(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("offline"), self.ctx.meter.in_scope("he.keys"):
            self.keys = ClientKeys.generate(self.params, self._steps())
            bundle = self.keys.public_bundle()
            self.key_bytes = (len(to_bytes(self.keys.secret_key)) + len(bundle["public_key"])
                              + len(bundle["galois_keys"]))
            ch.send_json("he.params", {"params": bundle["params"]})
            for name in ("public_key", "galois_keys"):
                ch.send(f"he.{name}", torch.frombuffer(bytearray(bundle[name]), dtype=torch.uint8))
        self._fetch()
        self._receive_weights()

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("online"):
            ops = self._ops(lambda v, layer, scope: client_linear(
                self.party, self.keys, v, self.he_layers[layer]["matrix"], scope))
            out = self.ctx.spec.forward(ops, fixed.encode(x, self.f))
            y = reveal_to(self.party, CLIENT, "output", out, "model output")
        return fixed.decode(y, self.f)


class HeServer(_HeRole, MpcServer):
    def offline(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("offline"), self.ctx.meter.in_scope("he.keys"):
            params = ch.recv_json("he.params")
            bundle = {"params": params.get("params") if isinstance(params, dict) else None}
            for name in ("public_key", "galois_keys"):
                data = ch.recv(f"he.{name}")
                if data.dtype != torch.uint8 or data.dim() != 1:
                    raise ValueError(f"he: {name} must be serialised bytes")
                bundle[name] = bytes(data.numpy())
            self.server_keys = ServerKeys.from_bundle(bundle, (PARAM_SET,))
            self.mats, self.bias = {}, {}
            for layer, info in self.he_layers.items():
                w = self.plain[f"{layer}.weight"]
                bias = self.plain.get(f"{layer}.bias")
                if "conv" in info:
                    w = toeplitz(w, info["conv"])
                    if bias is not None:
                        out = info["conv"]["out"]
                        bias = bias.repeat_interleave(out[1] * out[2])
                plan = geometry(info["matrix"], info["rows"], self.params.slots)
                self.mats[layer] = BlockMatrix(w.numpy(), plan, self.params,
                                               self.server_keys.context)
                if bias is not None:
                    self.bias[layer] = fixed.encode(bias, self.f)
        self._fetch()
        self._open_weights(skip=self.he_layers)

    def online(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("online"):
            ops = self._ops(lambda v, layer, scope: server_linear(
                self.party, self.server_keys, v, self.mats[layer], self.bias.get(layer), scope),
                self.additive)
            out = self.ctx.spec.forward(ops, torch.zeros(self.ctx.input_shape, dtype=torch.int64))
            reveal_to(self.party, CLIENT, "output", out, "model output")


class HeFamily(Family):
    name = "he"
    uses_dealer = True
    dealer_for = ("non-linear steps and activation x activation products; linear layers "
                  "with server weights run under CKKS without dealer material")
    description = ("CKKS (TenSEAL/SEAL) for linear layers with server weights, 2PC with a "
                   "dealer for the rest")

    def client(self, ctx):
        return HeClient(ctx)

    def server(self, ctx, weights):
        return HeServer(ctx, weights)
