"""``plaintext``: the client sends its input in the clear; the server runs torch.

Protocol: client -> server: x (float64); server -> client: y = model(x).
Communication: 2 rounds; client sends numel(x) * 8 bytes, server sends numel(y) * 8 (a
decoder: the generated token ids).
Leaks: everything: the server learns the client's input (logged as a reveal); the client
learns the output. The speed reference, not a private protocol.
"""

from __future__ import annotations

import torch

from protocols.families.base import ClientRole, Family, RoleContext, ServerRole, check_input
from protocols.ops import TorchOps


class PlaintextClient(ClientRole):
    def offline(self) -> None:
        self.ctx.channel.begin_epoch()

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            ch.meter.reveal("server", "plain.input", x.shape, "client input (plaintext protocol)")
            ch.send("plain.input", x)
            y = ch.recv("plain.output")
            ch.meter.reveal("client", "plain.output", y.shape, "model output")
        return y


class PlaintextServer(ServerRole):
    def __init__(self, ctx: RoleContext, weights):
        super().__init__(ctx)
        self.ops = TorchOps(weights, dtype=torch.float64, exact=True)

    def offline(self) -> None:
        self.ctx.channel.begin_epoch()

    def online(self):
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            x = self._recv_input()
            if x.dtype != torch.float64 or tuple(x.shape) != tuple(self.ctx.input_shape):
                raise ValueError(f"plaintext input of {x.dtype} {tuple(x.shape)}; expected "
                                 f"float64 {tuple(self.ctx.input_shape)}")
            if not torch.isfinite(x).all():
                raise ValueError("plaintext input holds NaN or inf")
            with torch.no_grad():
                y = self._run(x)
            self._send_output(y)

    def _recv_input(self):
        return self.ctx.channel.recv("plain.input")

    def _send_output(self, y):
        self.ctx.channel.send("plain.output", y)

    def _run(self, x):
        dec = self.ctx.spec.decoder
        if dec is None:
            return self.ctx.spec.forward(self.ops, x).to(torch.float64)
        length = dec.prompt_length(x)
        out = dec.run(self.ops, x, self.ctx.new_tokens, eviction=self.ctx.config.kv,
                      emit=lambda onehot: int(torch.argmax(onehot.reshape(-1))),
                      feed=lambda t, prev: dec.step_input(prev, length + t - 1))
        return torch.tensor([out], dtype=torch.int64)


class PlaintextFamily(Family):
    name = "plaintext"
    uses_dealer = False
    description = "no privacy: input sent in the clear, torch on the server (speed reference)"

    def client(self, ctx):
        return PlaintextClient(ctx)

    def server(self, ctx, weights):
        return PlaintextServer(ctx, weights)
