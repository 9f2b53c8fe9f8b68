"""``hybrid``: Delphi-style. HE (BFV) makes the masks of linear layers with server weights
offline; a dealer makes the rest (truncation, comparisons, activation products).

Offline: the client makes BFV keys (``he.bfv``) and sends its public key; the server
validates it and encodes its weight matrices (a conv2d as its dense Toeplitz matrix). For
each inference of the pool and each such layer, the client sends Enc(r) and gets back the
masked product (``he.delphi``); then both fetch dealer material for everything else,
including the truncations after these layers.
Online: the client's input becomes shares (x, 0); each linear layer costs one masked vector
from the client (T n ring elements) and the truncation after it; nonlinear steps run on
shares exactly as under ``mpc``; the server sends its output share to the client.
Layers: ``linear`` and ``conv2d`` (dense Toeplitz) take Delphi masks; elementwise weights
(LayerNorm) and inputs wider than 4096 (MiniLM's 30522-row embedding lookup) run as under
``mpc`` (constant-operand masks, dealer products). Decoders are refused at plan time.
Leaks: to the server, nothing beyond the public shapes (it sees x - r with r uniform in
Z_2^64); to the client, the output, and per linear layer and inference W r + s with s
uniform mod 2^48 in every coefficient, its decryption noise flooded (statistical parameter
at least SIGMA_MIN = 64 bits per coefficient; each layer's value is ``ServerLayer.sigma``).
Trust: semi-honest parties; BFV at 128-bit security; a dealer that does not collude with
either party, for the non-linear material and the truncations (``dealer`` in records).
"""

from __future__ import annotations

import torch

from he import coeff_matmul, delphi
from he.bfv import LIFT, BfvClientKeys, BfvServerKeys, get_bfv_params
from he.keys import to_bytes
from he.layer import recv_ct, send_ct
from mpc import fixed, prg, protocol
from mpc.ops import MpcOps
from mpc.protocol import CLIENT, reveal_to
from protocols.families.base import Family, check_input
from protocols.families.he_family import HePlanOps, he_plan, toeplitz
from protocols.families.secret_sharing import MpcClient, MpcServer
from protocols.needs import Need
from protocols.store import MaterialError

PARAM_SET = "bfv-n8192-t48"


class HybridPlanOps(HePlanOps):
    """As ``HePlanOps``, plus the truncation by f + LIFT after each HE-masked product.
    Layers wider than MAX_INPUT (the 30522-row embedding lookup) and elementwise weights
    run as under ``mpc``."""

    MAX_INPUT = 4096

    def _he_fits(self, m: int, n: int) -> bool:
        return n <= self.MAX_INPUT

    def _lifted_trunc(self, layer, out):
        if layer not in self.he_layers:
            return out
        info = self.he_layers[layer]
        shape = (info["rows"], info["matrix"][0])
        self.items.append(Need.make("trunc", self._scope, shape=shape,
                                    frac_bits=self.frac_bits + LIFT))
        return out

    def linear(self, x, layer):
        return self._lifted_trunc(layer, super().linear(x, layer))

    def conv2d(self, x, layer, *, stride=1, padding=0):
        return self._lifted_trunc(layer, super().conv2d(x, layer, stride=stride, padding=padding))


class HybridOps(MpcOps):
    """MpcOps whose layers in ``he_layers`` use the Delphi masks (``layer_fn``)."""

    name = "hybrid"

    def __init__(self, party, weights, he_layers, layer_fn, additive=None):
        super().__init__(party, weights, additive)
        self._layer_fn = layer_fn
        self.he_layers = he_layers

    def _product(self, flat, layer):
        z = self._layer_fn(flat, layer)
        return protocol.truncate(self.party, z, self._scope, bits=self.f + LIFT)

    def linear(self, x, layer):
        if layer not in self.he_layers:
            return super().linear(x, layer)
        shape = x.shape
        y = self._product(x.reshape(-1, shape[-1]), layer)
        return y.reshape(tuple(shape[:-1]) + (-1,))

    def conv2d(self, x, layer, *, stride=1, padding=0):
        y = self._product(x.reshape(x.shape[0], -1), layer)
        return y.reshape((x.shape[0],) + self.he_layers[layer]["conv"]["out"])


class _HybridRole:
    def _plan(self, ctx):
        needs, self.layers = he_plan(ctx.spec, ctx.input_shape, ctx.config, ctx.inferences,
                                     HybridPlanOps, "hybrid")
        self.params = get_bfv_params(PARAM_SET)
        self.geoms = {name: coeff_matmul.choose_geometry(info["rows"], info["matrix"][1],
                                                         info["matrix"][0],
                                                         self.params.poly_modulus_degree)
                      for name, info in self.layers.items()}
        self.pool: dict[int, dict[str, torch.Tensor]] = {}
        return needs

    def _scope(self, name):
        return f"{self.layers[name]['scope'] or name}.hybrid"

    def _masks_for(self, run):
        if run not in self.pool:
            raise MaterialError(f"hybrid: no offline masks for inference {run + 1}; the "
                                f"session prepared {self.ctx.inferences}")
        return self.pool.pop(run)           # used once

    def _ops(self, layer_fn, additive=None):
        return HybridOps(self.party, self.weights, self.layers, layer_fn, additive)


class HybridClient(_HybridRole, MpcClient):
    key_bytes = 0

    def storage_bytes(self) -> int:
        """The store, the BFV keys, the mask seed and the offline shares c."""
        held = sum(c.numel() * 8 for per in self.pool.values() for c in per.values())
        return super().storage_bytes() + self.key_bytes + prg.SEED_BYTES + held

    def peak_storage_bytes(self) -> int:
        return max(getattr(self, "_peak", 0), self.storage_bytes())

    def offline(self) -> None:
        ch, meter = self.ctx.channel, self.ctx.meter
        ch.begin_epoch()
        self.seed = prg.new_seed()
        with meter.in_phase("offline"):
            with meter.in_scope("he.keys"):
                self.keys = BfvClientKeys.generate(self.params)
                bundle = self.keys.public_bundle()
                self.key_bytes = len(to_bytes(self.keys.secret_key)) + len(bundle["public_key"])
                ch.send_json("hybrid.params", {"params": bundle["params"]})
                ch.send("hybrid.public_key",
                        torch.frombuffer(bytearray(bundle["public_key"]), dtype=torch.uint8))
            for run in range(self.ctx.inferences):
                shares = {}
                for k, (name, info) in enumerate(self.layers.items()):
                    geom = self.geoms[name]
                    with meter.in_scope(self._scope(name)):
                        r = delphi.client_mask(self.seed, run * len(self.layers) + k,
                                               (info["rows"], info["matrix"][1]))
                        for i, ct in enumerate(delphi.client_inputs(self.keys, geom, r)):
                            send_ct(ch, f"hybrid.{run}.{name}.in.{i}", ct)
                        replies = [recv_ct(ch, f"hybrid.{run}.{name}.out.{i}", self.keys.context)
                                   for i in range(geom.outputs)]
                        shares[name] = delphi.client_shares(self.keys, geom, replies)
                self.pool[run] = shares
        self._fetch()
        self._receive_weights()
        self._peak = self.storage_bytes()

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        run, order = self.runs, list(self.layers)
        with self.ctx.meter.in_phase("online"):
            masks = self._masks_for(run)
            self.runs += 1

            def layer_fn(x_c, name):
                info = self.layers[name]
                r = delphi.client_mask(self.seed, run * len(order) + order.index(name),
                                       (info["rows"], info["matrix"][1]))
                ch.send(f"{self._scope(name)}.masked", x_c - r)
                return masks.pop(name)

            out = self.ctx.spec.forward(self._ops(layer_fn), fixed.encode(x, self.f))
            y = reveal_to(self.party, CLIENT, "output", out, "model output")
        return fixed.decode(y, self.f)


class HybridServer(_HybridRole, MpcServer):
    def offline(self) -> None:
        ch, meter = self.ctx.channel, self.ctx.meter
        ch.begin_epoch()
        with meter.in_phase("offline"):
            with meter.in_scope("he.keys"):
                params = ch.recv_json("hybrid.params")
                data = ch.recv("hybrid.public_key")
                if data.dtype != torch.uint8 or data.dim() != 1:
                    raise ValueError("hybrid: the public key must be serialised bytes")
                self.server_keys = BfvServerKeys.from_bundle(
                    {"params": params.get("params") if isinstance(params, dict) else None,
                     "public_key": bytes(data.numpy())}, (PARAM_SET,))
            self.encoded = {}
            for run in range(self.ctx.inferences):
                shares = {}
                for name, info in self.layers.items():
                    with meter.in_scope(self._scope(name)):
                        if name not in self.encoded:        # encoded when first needed
                            self.encoded[name] = self._encode(name, info)
                        layer = self.encoded[name]
                        cts = [recv_ct(ch, f"hybrid.{run}.{name}.in.{i}",
                                       self.server_keys.context)
                               for i in range(layer.geom.inputs)]
                        replies, shares[name] = delphi.server_replies(self.server_keys, layer, cts)
                        for i, ct in enumerate(replies):
                            send_ct(ch, f"hybrid.{run}.{name}.out.{i}", ct)
                self.pool[run] = shares
        self._fetch()
        self._open_weights(skip=self.layers)

    def _encode(self, name, info):
        w = self.plain[f"{name}.weight"]
        bias = self.plain.get(f"{name}.bias")
        if "conv" in info:
            w = toeplitz(w, info["conv"])
            if bias is not None:
                out = info["conv"]["out"]
                bias = bias.repeat_interleave(out[1] * out[2])
        bias = None if bias is None else fixed.encode(bias, 2 * self.f,
                                                      limit=fixed.max_abs(self.f)) << LIFT
        return delphi.ServerLayer(self.server_keys, self.geoms[name], fixed.encode(w, self.f),
                                  bias, f"hybrid layer {name!r}")

    def online(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("online"):
            masks = self._masks_for(self.runs)
            self.runs += 1

            def layer_fn(x_s, name):
                u = ch.recv(f"{self._scope(name)}.masked")
                if tuple(u.shape) != tuple(x_s.shape) or u.dtype != torch.int64:
                    raise ValueError(f"hybrid: masked input of layer {name!r} has shape "
                                     f"{tuple(u.shape)}, expected {tuple(x_s.shape)}")
                return delphi.server_online(self.encoded[name], u, x_s, masks.pop(name))

            ops = self._ops(layer_fn, self.additive)
            out = self.ctx.spec.forward(ops, torch.zeros(self.ctx.input_shape, dtype=torch.int64))
            reveal_to(self.party, CLIENT, "output", out, "model output")


class HybridFamily(Family):
    name = "hybrid"
    uses_dealer = True
    dealer_for = ("truncations, non-linear steps and activation x activation products; the "
                  "masks of linear layers with server weights come from BFV offline")
    description = ("Delphi-style: BFV makes the masks of linear layers offline (one masked "
                   "vector online); a dealer makes the non-linear and truncation material")

    def client(self, ctx):
        return HybridClient(ctx)

    def server(self, ctx, weights):
        return HybridServer(ctx, weights)
