"""``mpc``: two-party additive secret sharing over Z_2^64 with a dealer.

Offline (input-independent), for a pool of ``inferences`` inferences:
  1. both parties plan the Needs from the public architecture and input shape;
  2. each fetches its material from the dealer (a separate process): the client a 16-byte
     seed, the server its seed and the corrections (``mpc.dealer``);
  3. the server opens each weight once per session under its constant-operand mask:
     it sends F = W - B (B server-known, from its seed) to the client, who stores F.
Online, per inference:
  1. the client encodes its input x in fixed point; shares are (x, 0) (the first product
     masks x with the dealer's fresh A, so the server's view stays uniform);
  2. both run the model through ``MpcOps`` (Beaver products, TruncAPr truncation);
  3. the server sends its share of the output to the client (a declared reveal).
Communication: see ``mpc.ops`` for each layer; the offline phase moves the dealer's
material and sum(|W|) * 8 bytes of masked weights to the client.
Decoders (``models.decoding``): one inference prefills the prompt bucket, then generates
``new_tokens`` tokens; each step's argmax one-hot is revealed to the client only, who feeds
the token back as private input. Cached K/V rows keep shared-only masks (``mpc.cached``),
so a step opens only its new query, rows and attention weights.
Leaks: to the server, nothing beyond the public input shape (for a decoder: the prompt
bucket and the number of generated tokens); to the client, the output (logged as a
reveal; for a decoder, the generated tokens only). The client stores F = W - B, which is uniform without B. Trust: the
dealer does not collude with either party; semi-honest parties.
"""

from __future__ import annotations

import time

import torch

from mpc import fixed, material
from mpc.dealer import fetch_material
from mpc.ops import MpcOps, PlanOps, WeightShare
from mpc.protocol import CLIENT, SERVER, Party, reveal_to
from protocols.families.base import ClientRole, Family, RoleContext, ServerRole, check_input
from protocols.needs import Needs
from protocols.store import MaterialError, MaterialStore


def plan(spec, input_shape, config, inferences: int = 1, new_tokens: int = 0) -> Needs:
    """Exactly what the online phase will consume, from public facts only."""
    ops = PlanOps(spec.params, config.fixed.frac_bits, config.compare)
    x = PlanOps.tensor(input_shape)
    if spec.decoder is None:
        spec.forward(ops, x)
    else:
        cfg = spec.decoder.cfg
        spec.decoder.run(ops, x, new_tokens, emit=lambda onehot: None, eviction=config.kv,
                         feed=lambda t, prev: (PlanOps.tensor((1, 1, cfg.vocab)),
                                               PlanOps.tensor((1, 1, cfg.ctx))))
    return Needs(tuple(ops.items), tuple(sorted(ops.constants.items())), inferences)


def generate(party: Party, ops: MpcOps, spec, x_share, new_tokens: int, length: int | None,
             marks: list | None = None, eviction=None):
    """Private greedy decoding (``models.decoding``): each step's argmax one-hot is revealed
    to the client only, who feeds the token back as its next private input; the server's
    shares of the fed rows are zeros. ``length``: the client's private prompt length."""
    dec = spec.decoder
    f = party.frac_bits

    def emit(onehot):
        y = reveal_to(party, CLIENT, "token", onehot, "generated token (argmax one-hot)")
        return None if y is None else int(torch.argmax(fixed.decode(y, f).reshape(-1)))

    def feed(t, prev):
        if party.index == CLIENT:
            return tuple(fixed.encode(r, f) for r in dec.step_input(prev, length + t - 1))
        return (torch.zeros((1, 1, dec.cfg.vocab), dtype=torch.int64),
                torch.zeros((1, 1, dec.cfg.ctx), dtype=torch.int64))

    if marks is not None:
        marks[:] = [time.perf_counter()]
    return dec.run(ops, x_share, new_tokens, emit=emit, feed=feed, eviction=eviction,
                   on_token=None if marks is None else lambda t: marks.append(time.perf_counter()))


class _MpcRole:
    party_index: int

    def _setup(self, ctx: RoleContext):
        self.f = ctx.config.fixed.frac_bits
        self.needs = self._plan(ctx)
        self.runs = 0
        self.token_marks: list[float] = []    # decoders: start, then one time per token
        self.store: MaterialStore | None = None
        self.party: Party | None = None

    def _plan(self, ctx: RoleContext) -> Needs:
        return plan(ctx.spec, ctx.input_shape, ctx.config, ctx.inferences, ctx.new_tokens)

    def _fetch(self):
        ctx = self.ctx
        if ctx.dealer_connect is None or ctx.store_root is None:
            raise MaterialError("the mpc protocol needs a dealer address and a store directory")
        role = "client" if self.party_index == CLIENT else "server"
        self.store = MaterialStore(ctx.store_root, party=role, session_id=ctx.session_id,
                                   family="mpc", frac_bits=self.f, needs=self.needs)
        dealer = ctx.dealer_connect()
        try:
            with ctx.meter.in_phase("offline"), ctx.meter.in_scope("dealer"):
                fetch_material(dealer, self.store, role=role, session_id=ctx.session_id,
                               frac_bits=self.f, needs=self.needs)
        finally:
            dealer.close()
        self.party = Party(self.party_index, ctx.channel, self.store, self.f, ctx.config.compare)

    def storage_bytes(self) -> int:
        return self.store.storage_bytes() if self.store else 0

    def peak_storage_bytes(self) -> int:
        return max(self.store.peak_bytes, self.storage_bytes()) if self.store else 0

    def close(self, failed: bool = False) -> None:
        if self.store is not None:
            self.store.burn()


class MpcClient(_MpcRole, ClientRole):
    party_index = CLIENT

    def __init__(self, ctx: RoleContext):
        super().__init__(ctx)
        self._setup(ctx)
        self.weights: dict[str, WeightShare] = {}

    def offline(self) -> None:
        self._fetch()
        self._receive_weights()

    def _receive_weights(self) -> None:
        """Store the masked weights F = W - B the server opens (once per session)."""
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("offline"), self.ctx.meter.in_scope("weights"):
            for key, shape in self.needs.constants:
                with self.ctx.meter.in_scope(key.removesuffix(".weight")):
                    masked = ch.recv(f"const.{key}")
                if tuple(masked.shape) != tuple(shape) or masked.dtype != torch.int64:
                    raise MaterialError(f"masked weight {key} has shape {tuple(masked.shape)}, "
                                        f"expected {shape}")
                self.store.put_constant(key, masked)
        for key, _ in self.needs.constants:
            self.weights[key.removesuffix(".weight")] = WeightShare(self.store.constant(key))

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("online"):
            share = fixed.encode(x, self.f)
            ops = MpcOps(self.party, self.weights, generation=self.runs)
            self.runs += 1
            if self.ctx.spec.decoder is not None:
                length = self.ctx.spec.decoder.prompt_length(x)
                return torch.tensor([generate(self.party, ops, self.ctx.spec, share,
                                              self.ctx.new_tokens, length, self.token_marks,
                                              self.ctx.config.kv)])
            out = self.ctx.spec.forward(ops, share)
            y = reveal_to(self.party, CLIENT, "output", out, "model output")
        return fixed.decode(y, self.f)


class MpcServer(_MpcRole, ServerRole):
    party_index = SERVER

    def __init__(self, ctx: RoleContext, weights: dict[str, torch.Tensor]):
        super().__init__(ctx)
        self._setup(ctx)
        self.plain = weights
        self.weights: dict[str, WeightShare] = {}

    def offline(self) -> None:
        self._fetch()
        self._open_weights()

    def _open_weights(self, skip=frozenset()) -> None:
        """Open each constant weight once under its mask: F = W - B to the client. The
        server's remaining tensors (``skip``: layers served another way) become the
        additive terms it adds to its shares."""
        ch = self.ctx.channel
        ch.begin_epoch()
        seed = self.store.seed
        with self.ctx.meter.in_phase("offline"), self.ctx.meter.in_scope("weights"):
            for key, _ in self.needs.constants:
                layer = key.removesuffix(".weight")
                w = fixed.encode(self.plain[key], self.f)
                masked = w - material.const_mask(seed, self.needs, key)
                self.store.mark_opened(key)
                with self.ctx.meter.in_scope(layer):
                    ch.send(f"const.{key}", masked)
                bias = self.plain.get(f"{layer}.bias")
                bias = None if bias is None else fixed.encode(bias, 2 * self.f,
                                                              limit=fixed.max_abs(self.f))
                self.weights[layer] = WeightShare(masked, w, bias)
        used = {k for k, _ in self.needs.constants} | {k[:-len("weight")] + "bias"
                                                       for k, _ in self.needs.constants}
        used |= {f"{layer}.{k}" for layer in skip for k in ("weight", "bias")}
        self.additive = {k: fixed.encode(v, self.f) for k, v in self.plain.items()
                         if k not in used}

    def online(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with self.ctx.meter.in_phase("online"):
            share = torch.zeros(self.ctx.input_shape, dtype=torch.int64)
            ops = MpcOps(self.party, self.weights, self.additive, generation=self.runs)
            self.runs += 1
            if self.ctx.spec.decoder is not None:
                generate(self.party, ops, self.ctx.spec, share, self.ctx.new_tokens, None,
                         eviction=self.ctx.config.kv)
                return
            out = self.ctx.spec.forward(ops, share)
            reveal_to(self.party, CLIENT, "output", out, "model output")


class SecretSharingFamily(Family):
    name = "mpc"
    uses_dealer = True
    description = "2PC additive sharing over Z_2^64, Beaver products, dealer-made material"
    dealer_for = "all material: products (linear layers included), truncations, comparisons"

    def client(self, ctx):
        return MpcClient(ctx)

    def server(self, ctx, weights):
        return MpcServer(ctx, weights)
