"""``plaintext``: the client sends its input in the clear; the server runs torch, fast.

The server's path (``FastOps``): float32 (accurate to ~1e-6 on every model here, tested
against float64), inference mode, CUDA when a GPU is present (never required), and
one-hot rows against a table of at least 4096 rows (MiniLM's 30522-row word embedding) as
a row gather instead of a matmul: the same result, without the T x V x d multiply that
dominates MiniLM's forward (narrower tables, like tiny-gpt's, stay matmuls: faster there).

Protocol: client -> server: x (float64); server -> client: y = model(x).
Offline: the server says when its fast path is ready (one small message).
Communication online: 2 rounds; client sends numel(x) * 8 bytes, or for token models (one-hot
rows in length buckets) only the nonzero entries, 16 bytes each (``pack_input``: 512 B
instead of 7.45 MiB for MiniLM at 32 tokens); server sends numel(y) * 8 (a decoder: the
generated token ids).
Leaks: everything: the server learns the client's input (logged as a reveal); the client
learns the output. The speed reference, not a private protocol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protocols.families.base import ClientRole, Family, RoleContext, ServerRole, check_input
from protocols.ops import TorchOps


def pack_input(spec, x: torch.Tensor) -> torch.Tensor:
    """What goes on the wire: x itself, or for token models (one-hot rows, public length
    buckets) a (2, k) tensor of flat indices and values of its nonzero entries."""
    if not spec.seq_buckets:
        return x
    flat = x.reshape(-1)
    idx = flat.nonzero().reshape(-1)
    return torch.stack([idx.to(torch.float64), flat[idx]])


def unpack_input(spec, shape, data: torch.Tensor) -> torch.Tensor:
    """The server's side of ``pack_input``, checked: a malformed frame is refused by name."""
    if not spec.seq_buckets:
        return data
    n = 1
    for s in shape:
        n *= s
    if data.dtype != torch.float64 or data.dim() != 2 or data.shape[0] != 2 or \
            data.shape[1] > n:
        raise ValueError(f"sparse input of {data.dtype} {tuple(data.shape)}; expected float64 "
                         f"(2, k <= {n})")
    idx = data[0]
    if not torch.isfinite(data).all() or bool((idx != idx.round()).any()) or \
            bool(((idx < 0) | (idx >= n)).any()):
        raise ValueError(f"sparse input indices must be integers in [0, {n})")
    x = torch.zeros(n, dtype=torch.float64)
    x[idx.long()] = data[1]
    return x.reshape(shape)


class PlaintextClient(ClientRole):
    def offline(self) -> None:
        """Wait until the server has its fast path ready, so that its set-up (weights to
        float32, the lookup table) counts as offline, not in the first inference."""
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("offline"):
            ch.recv_json("plain.ready")

    def online(self, x):
        x = check_input(self.ctx, x)
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("online"):
            ch.meter.reveal("server", "plain.input", x.shape, "client input (plaintext protocol)")
            ch.send("plain.input", pack_input(self.ctx.spec, x))
            y = ch.recv("plain.output")
            ch.meter.reveal("client", "plain.output", y.shape, "model output")
        return y


GATHER_MIN_ROWS = 4096     # one-hot inputs at least this wide are gathered (narrower: matmul wins)


class FastOps(TorchOps):
    """The plaintext path: TorchOps in float32 (CUDA if present) with one-hot lookups."""

    def __init__(self, weights, dtype=torch.float32, device=None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(weights, dtype=dtype, device=device, exact=True)
        self.name = f"fast-{str(dtype).removeprefix('torch.')}-{self.device.type}"
        self._rows = {k[:-len(".weight")]: v.t().contiguous() for k, v in self.weights.items()
                      if k.endswith(".weight") and v.dim() == 2 and v.shape[1] >= GATHER_MIN_ROWS}

    def linear(self, x, layer):
        table = self._rows.get(layer)
        if table is not None:
            hits = x != 0
            if int(hits.sum(-1).max()) <= 1 and bool((x[hits] == 1).all()):
                idx = x.argmax(-1)                       # one-hot rows: a lookup
                out = table[idx] * hits.any(-1, keepdim=True).to(table.dtype)
                b = self.weights.get(f"{layer}.bias")
                return out if b is None else out + b
        return super().linear(x, layer)


class SdpaOps(FastOps):
    """FastOps with attention as one fused call (``F.scaled_dot_product_attention``, scale 1:
    the model pre-scales its queries) instead of matmul, softmax, matmul."""

    def __init__(self, weights, dtype=torch.float32, device=None):
        super().__init__(weights, dtype=dtype, device=device)
        self.name = self.name.replace("fast-", "fast-sdpa-")

    def native_attention(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=1.0)


def run_fast(spec, ops, x):
    """The plaintext forward on ``ops`` (float64 result, on the CPU)."""
    with torch.inference_mode():
        return spec.forward(ops, ops.input(x)).to("cpu", torch.float64)


class PlaintextServer(ServerRole):
    def __init__(self, ctx: RoleContext, weights):
        super().__init__(ctx)
        self.ops = FastOps(weights)

    def offline(self) -> None:
        ch = self.ctx.channel
        ch.begin_epoch()
        with ch.meter.in_phase("offline"):
            ch.send_json("plain.ready", {"path": self.ops.name})

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
            with torch.inference_mode():
                y = self._run(self.ops.input(x))
            self._send_output(y)

    def _recv_input(self):
        data = self.ctx.channel.recv("plain.input")
        return unpack_input(self.ctx.spec, self.ctx.input_shape, data)

    def _send_output(self, y):
        self.ctx.channel.send("plain.output", y)

    def _run(self, x):
        dec = self.ctx.spec.decoder
        if dec is None:
            return self.ctx.spec.forward(self.ops, x).to("cpu", torch.float64)
        length = dec.prompt_length(x)
        out = dec.run(self.ops, x, self.ctx.new_tokens, eviction=self.ctx.config.kv,
                      emit=lambda onehot: int(torch.argmax(onehot.reshape(-1))),
                      feed=lambda t, prev: tuple(self.ops.input(r) for r in
                                                 dec.step_input(prev, length + t - 1)))
        return torch.tensor([out], dtype=torch.int64)


class PlaintextFamily(Family):
    name = "plaintext"
    uses_dealer = False
    description = "no privacy: input sent in the clear, torch on the server (speed reference)"

    def client(self, ctx):
        return PlaintextClient(ctx)

    def server(self, ctx, weights):
        return PlaintextServer(ctx, weights)
