"""``ee``: equivariant encryption. The model owner transformed the model with a key
(``models.equivariant``) and deployed it to this host; the client holds the same key.

Setting (its own threat-model row): owner, host and client. The owner makes a fresh key
per deployment (``python -m server.ee_owner``), gives the host only the transformed
weights and a public deployment id, and gives its clients the key.
Protocol:
  1. host -> client: the deployment id; the client refuses a host whose id differs from
     its key's (a key of another deployment gives wrong outputs, silently otherwise);
  2. client -> host: x' = encrypt(x): its one-hot token rows with the vocabulary permuted
     (a decoder's position rows as they are);
  3. host: the ``plaintext`` family's forward code on x' and the transformed weights, at
     plaintext speed; a decoder generates greedily in the permuted vocabulary;
  4. host -> client: y' (an embedding in permuted features; or permuted token ids); the
     client decrypts.
Communication: 2 messages, as ``plaintext``.
Leaks (to the host; obfuscation, not cryptography): the transformed input and output,
hence the order and number of non-padding rows, the permuted token ids (their
frequencies), and weights that match the public base model row for row, so a host that
knows the base weights recovers the key (``benchmarks/ee_attacks.py`` measures each
attack). To the client: the output. The key is shared by all clients of a deployment.
"""

from __future__ import annotations

import torch

from models.equivariant import Arch, EeKeyError
from protocols.families.base import ClientRole, Family, check_input
from protocols.families.plaintext import PlaintextServer, pack_input, unpack_input


def encrypt_input(spec, key, x: torch.Tensor) -> torch.Tensor:
    a = Arch.of(spec)
    if a.kind == "gpt":
        return torch.cat([key.encrypt_tokens(x[..., :a.vocab]), x[..., a.vocab:]], dim=-1)
    return key.encrypt_tokens(x)


class EeClient(ClientRole):
    def offline(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        key = self.ctx.ee_key
        if key is None:
            raise EeKeyError("the ee protocol needs the deployment's key (--ee-key)")
        Arch.of(self.ctx.spec)
        with ch.meter.in_phase("offline"):
            info = ch.recv_json("ee.deployment")
        host = info.get("deployment") if isinstance(info, dict) else None
        if host != key.deployment or info.get("model") != key.model:
            msg = (f"the key is for deployment {key.deployment!r} of {key.model!r}; the host "
                   f"serves deployment {host!r}")
            ch.abort(msg)                       # the host learns why at once
            raise EeKeyError(msg)

    def online(self, x):
        x = check_input(self.ctx, x)
        key, spec = self.ctx.ee_key, self.ctx.spec
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            xe = encrypt_input(spec, key, x)
            ch.meter.reveal("server", "ee.input", xe.shape,
                            "client input under the ee transform (obfuscation)")
            ch.send("ee.input", pack_input(spec, xe))
            y = ch.recv("ee.output")
            ch.meter.reveal("server", "ee.output", y.shape,
                            "model output under the ee transform (obfuscation)")
        if spec.decoder is not None:
            return torch.tensor([[key.decrypt_token(int(t)) for t in y.reshape(-1)]])
        return key.decrypt_features(y)


class EeServer(PlaintextServer):
    """The untrusted host: the plaintext forward on the transformed weights."""

    def offline(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        if not self.ctx.ee_deployment:
            raise EeKeyError("the ee protocol needs a deployment (--ee-deployment)")
        with ch.meter.in_phase("offline"):
            ch.send_json("ee.deployment", {"deployment": self.ctx.ee_deployment,
                                           "model": self.ctx.spec.name})

    def _recv_input(self):
        return unpack_input(self.ctx.spec, self.ctx.input_shape, self.ctx.channel.recv("ee.input"))

    def _send_output(self, y):
        self.ctx.channel.send("ee.output", y)


class EquivariantFamily(Family):
    name = "ee"
    uses_dealer = False
    description = ("equivariant encryption: the host runs an owner-transformed model at "
                   "plaintext speed; obfuscation with its own threat model, not cryptography")

    def client(self, ctx):
        return EeClient(ctx)

    def server(self, ctx, weights):
        return EeServer(ctx, weights)
