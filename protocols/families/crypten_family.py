"""``crypten``: CrypTen 0.4.1 as a peer backend, over our gRPC channel and our meter.

Each role starts a CrypTen worker process (``crypten_worker``; CrypTen's global state
stays there) and relays its traffic: every send, receive and collective CrypTen makes
becomes a frame on the session's channel, so bytes and rounds are counted exactly as for
our own protocols (an all-reduce, both parties sending then receiving, is one round). The
models are ours, run through ``CryptenOps``: CrypTen's own ReLU, max, softmax, tanh,
sigmoid and inv_sqrt (pinned as ``crypten_ops`` states), Beaver products for every
linear layer with the weights encrypted by the server. The embedding is treated as under
``mpc``: the client's one-hot rows times the server's encrypted word table.

Parties: the client is CrypTen's party 0 (it supplies the input), the server party 1 (it
supplies the weights). Provider: CrypTen's TFP ("trusted first party"), no dealer.

Offline: the workers start, CrypTen seeds its pseudo-random zero sharings (one seed to
the peer, one global seed broadcast: 2 rounds, 16 bytes each way), the server encrypts
its weights (no communication). CrypTen makes its triples during the forward, so nothing
else is input-independent: its online figures include triple generation.
Online: CrypTen's forward (followed by the output policy, ``models.output_policy``, on
encrypted values); the output is revealed to the client only (one reduce).

Leaks: under TFP party 0 (the client) draws every Beaver triple, comparison mask and
wrap share itself, in the clear, from torch's default generator (seeded here from
``secrets``; a Mersenne twister, not a cryptographic generator). Holding A and B for
every product, the client can unmask every opened W - B and recover the server's
weights, and every opened activation: there is no security against the client, and a
semi-honest client learns the model. The server (party 1) sees only masked openings;
what it learns is what it could infer from those through a non-cryptographic generator.
This is CrypTen's provider, reported as ``dealer = tfp-party0``; it is a cost baseline,
not a private protocol. The reveal log records the output to the client.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import weakref

import torch

from protocols.families.base import ClientRole, Family, RoleContext, ServerRole, check_input
from protocols.families.crypten_pipe import PipeError, read_msg, write_msg

CLIENT_RANK, SERVER_RANK = 0, 1
STOP_WAIT_S = 5.0


def spec_ref(spec) -> str:
    """How the worker finds the model: ``notes["spec_ref"]`` or the registry name."""
    return spec.notes.get("spec_ref", spec.name)


def _kill(proc) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(STOP_WAIT_S)


class CryptenWorker:
    """The adapter: one CrypTen party in a child process, relayed over ``ctx.channel``."""

    def __init__(self, ctx: RoleContext, rank: int):
        self.ctx = ctx
        start = {"rank": rank, "spec_ref": spec_ref(ctx.spec),
                 "arch_digest": ctx.spec.arch_digest(), "input_shape": list(ctx.input_shape),
                 "gelu": ctx.config.crypten.gelu, "threads": ctx.config.threads,
                 # models.output_policy, re-applied in the worker to the model it resolves
                 "output": ctx.spec.notes.get("output_policy")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protocols.families.crypten_worker", json.dumps(start)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self._scopes: list = []

    def command(self, header: dict, tensor: torch.Tensor | None = None) -> None:
        try:
            write_msg(self.proc.stdin, header, tensor)
        except (BrokenPipeError, OSError):
            raise PipeError(f"crypten worker exited (code {self.proc.poll()})") from None

    def serve(self, until: str) -> tuple[dict, torch.Tensor | None]:
        """Relay the worker's traffic until it answers ``until``."""
        ch, meter = self.ctx.channel, self.ctx.meter
        while True:
            try:
                head, t = read_msg(self.proc.stdout, timeout=ch.recv_timeout)
            except PipeError as exc:
                raise PipeError(f"crypten worker (code {self.proc.poll()}): {exc}") from None
            op = head["op"]
            if op == "send":
                ch.send(head["tag"], t)
            elif op == "recv":
                self.command({"op": "data"}, ch.recv(head["tag"]))
            elif op == "scope":
                if head["event"] == "enter":
                    cm = meter.in_scope(head["name"])
                    cm.__enter__()
                    self._scopes.append(cm)
                elif self._scopes:
                    self._scopes.pop().__exit__(None, None, None)
            elif op == "error":
                raise RuntimeError(f"crypten worker: {head.get('message')}")
            elif op == until:
                return head, t
            else:
                raise PipeError(f"crypten worker sent {op!r} while {until!r} was due")

    def stop(self, failed: bool) -> None:
        while self._scopes:
            self._scopes.pop().__exit__(None, None, None)
        if not failed and self.proc.poll() is None:
            with contextlib.suppress(PipeError):
                self.command({"op": "stop"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_WAIT_S)
        _kill(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


class _CryptenRole:
    rank: int
    worker: CryptenWorker | None = None

    def _start(self, weights=None) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("offline"):
            self.worker = CryptenWorker(self.ctx, self.rank)
            if weights is not None:
                for name in self.ctx.spec.params:
                    self.worker.command({"op": "weight", "name": name},
                                        weights[name].to(torch.float64))
                self.worker.command({"op": "weights_done"})
            self.worker.serve("ready")

    def close(self, failed: bool = False) -> None:
        if self.worker is not None:
            self.worker.stop(failed)
            self.worker = None


class CryptenClient(_CryptenRole, ClientRole):
    rank = CLIENT_RANK

    def offline(self) -> None:
        self._start()

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            self.worker.command({"op": "run"}, x)
            head, raw = self.worker.serve("output")
            ch.meter.reveal("client", "crypten.output", tuple(raw.shape), "model output")
        return raw.to(torch.float64) / float(head["scale"])


class CryptenServer(_CryptenRole, ServerRole):
    rank = SERVER_RANK

    def __init__(self, ctx: RoleContext, weights):
        super().__init__(ctx)
        missing = [k for k in ctx.spec.params if k not in weights]
        if missing:
            raise KeyError(f"weights lack {missing[:3]}")
        self.weights = weights

    def offline(self) -> None:
        self._start(self.weights)

    def online(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            self.worker.command({"op": "run"})
            self.worker.serve("done")


class CryptenFamily(Family):
    name = "crypten"
    uses_dealer = False
    description = ("CrypTen 0.4.1 (TFP provider: the client makes every triple, so no "
                   "security against it) over our channel: a peer cost baseline")
    dealer_for = "none: CrypTen's TFP provider makes every triple in party 0 (the client)"
    dealer_label = "tfp-party0"

    @staticmethod
    def _check(ctx: RoleContext) -> None:
        if getattr(ctx.spec, "decoder", None) is not None:
            raise ValueError(f"crypten runs encoders and classifiers; {ctx.spec.name} is a "
                             "decoder (use mpc for private decoding)")

    def client(self, ctx):
        self._check(ctx)
        return CryptenClient(ctx)

    def server(self, ctx, weights):
        self._check(ctx)
        return CryptenServer(ctx, weights)
