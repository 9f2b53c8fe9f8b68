"""Client Python API: one object per private-inference session.

    with PrivateInference(model="digits-cnn", protocol="mpc", server="127.0.0.1:P",
                          dealer="127.0.0.1:D", tls=TlsFiles.for_role(certs, "client")) as s:
        s.offline()                 # preprocessing for `inferences` runs
        y = s.infer(x)              # x: float tensor of shape (batch, *model input)
        record = s.record()         # metrics in the benchmark record schema

What ``infer`` returns is the agreed output policy (``config.output``, the same on both
sides; ``models.output_policy``): for a classifier by default the one-hot of the label
(batch, classes), with ``output.policy=topk`` the k one-hot rows (batch, k, classes),
with ``output.policy=full`` the logits; an embedding model's vector; a decoder's tokens.
A server with ``--query-budget`` refuses a session it cannot cover (``QueryBudgetError``).

The CLI (``python -m client``) and the benchmarks use exactly this.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import grpc
import torch

from models import output_policy
from models.registry import get_model
from protocols import tls as tls_mod
from protocols.config import Config
from protocols.endpoints import dial, wait_ready
from protocols.families.base import RoleContext, check_input
from protocols.grpc_link import describe_rpc_error, open_stream
from protocols.metering import Meter
from protocols.registry import get_family
from protocols.session import (VERSION, HandshakeError, QueryBudgetError, check_new_tokens,
                               make_hello)
from protocols.wire import pinfer_pb2_grpc as rpc

DEFAULT_STORE = Path(".pinfer/client-store")
CONNECT_TIMEOUT_S = 3.0   # server and dealer: a dead or frozen one is reported within 5 s


class PrivateInference:
    def __init__(self, *, model: str, protocol: str, server: str, dealer: str | None = None,
                 tls: tls_mod.TlsFiles | None = None, config: Config | None = None,
                 batch: int = 1, inferences: int = 1, store_root: Path = DEFAULT_STORE,
                 connect_timeout: float = CONNECT_TIMEOUT_S, seq_len: int | None = None,
                 new_tokens: int = 0, ee_key=None):
        self.ee_key = ee_key
        self.family = get_family(protocol)
        self.server_target = server
        self.dealer_target = dealer
        self.tls = tls
        self.config = config or Config()
        # the model followed by the output policy, as the server runs it (OutputPolicyError)
        base = get_model(model)
        self.output_policy = output_policy.describe(base, self.config, self.family.name)
        self.spec = output_policy.apply(base, self.config, self.family.name)
        example = tuple(self.spec.input_shape)
        if seq_len is not None:
            if not self.spec.seq_buckets or seq_len not in self.spec.seq_buckets:
                raise ValueError(f"{model} takes no sequence length {seq_len} "
                                 f"(buckets: {self.spec.seq_buckets})")
            example = (seq_len,) + example[1:]
        self.input_shape = (batch,) + example
        if self.spec.decoder is not None and not new_tokens:
            new_tokens = 1
        check_new_tokens(self.spec, self.input_shape, new_tokens)   # HandshakeError early
        self.new_tokens = new_tokens
        self.inferences = inferences
        self.store_root = Path(store_root)
        self.connect_timeout = connect_timeout
        self.meter = Meter("client")
        self.session_id: str | None = None
        self.server_dealer = "none"
        self.online_seconds: list[float] = []
        self.server_summary: dict | None = None
        self._grpc = None
        self._dealer_grpc = None
        self._chan = None
        self._role = None
        self._runs = 0
        if self.family.uses_dealer and not dealer:
            raise ValueError(f"protocol {protocol} needs a dealer address (--dealer HOST:PORT)")

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc is not None)

    def connect(self) -> None:
        """Dial the server, run the handshake, open the session stream."""
        t = self.config.transport
        self._grpc = dial(self.server_target, self.tls, t)
        wait_ready(self._grpc, self.server_target, self.connect_timeout)
        if self.family.uses_dealer and self._dealer_grpc is None:
            # connected before the handshake, so that a dealer lost later fails at once
            self._dealer_grpc = dial(self.dealer_target, self.tls, t)
            try:
                wait_ready(self._dealer_grpc, self.dealer_target, self.connect_timeout)
            except ConnectionError:
                self._grpc.close()
                raise
        stub = rpc.PartyStub(self._grpc)
        hello = make_hello(spec=self.spec, protocol=self.family.name,
                           config_digest=self.config.digest(), input_shape=self.input_shape,
                           inferences=self.inferences, new_tokens=self.new_tokens)
        try:
            reply = stub.Hello(hello, timeout=t.rpc_deadline_s)
        except grpc.RpcError as exc:
            self._grpc.close()
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise HandshakeError(f"server refused the handshake: {exc.details()}") from None
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise QueryBudgetError(f"server refused the session: {exc.details()}") from None
            raise ConnectionError(f"handshake with {self.server_target} failed: "
                                  f"{describe_rpc_error(exc)}") from None
        self.session_id = reply.session_id
        self.server_dealer = reply.dealer
        self._chan = open_stream(stub.Session, self.meter, link="peer",
                                 session_id=self.session_id, transport=t,
                                 integrity=self.tls is None)
        ctx = RoleContext(spec=self.spec, config=self.config, channel=self._chan,
                          meter=self.meter, session_id=self.session_id,
                          input_shape=self.input_shape, inferences=self.inferences,
                          store_root=self.store_root, dealer_connect=self._connect_dealer,
                          new_tokens=self.new_tokens, ee_key=self.ee_key)
        self._role = self.family.client(ctx)

    def _connect_dealer(self):
        if self._dealer_grpc is None:
            self._dealer_grpc = dial(self.dealer_target, self.tls, self.config.transport)
            wait_ready(self._dealer_grpc, self.dealer_target, self.connect_timeout)
        return open_stream(rpc.DealerStub(self._dealer_grpc).Session, self.meter, link="dealer",
                           session_id=self.session_id, transport=self.config.transport,
                           integrity=self.tls is None)

    def offline(self) -> None:
        t0 = time.perf_counter()
        self._guard(self._role.offline)
        self.meter.add_seconds("offline", time.perf_counter() - t0)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        if self._runs >= self.inferences:
            raise RuntimeError(f"this session was prepared for {self.inferences} inferences; "
                               "open a new one")
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"input must be a tensor or an array of numbers, got "
                                f"{type(x).__name__}") from None
        if tuple(x.shape) == tuple(self.input_shape[1:]):
            x = x.unsqueeze(0)
        x = check_input(self._role.ctx, x)   # bad input raises here: nothing sent, session intact
        t0 = time.perf_counter()

        def run():
            with self.meter.in_phase("control"):
                self._chan.send_json("ctl", {"op": "infer"})
            return self._role.online(x)

        y = self._guard(run)
        dt = time.perf_counter() - t0
        self.meter.add_seconds("online", dt)
        self.online_seconds.append(dt)
        self._runs += 1
        return y

    def generate(self, prompt_ids) -> list[int]:
        """Decoders: greedy-generate ``new_tokens`` tokens after the prompt (token ids)."""
        if self.spec.decoder is None:
            raise ValueError(f"model {self.spec.name} is not a decoder")
        x = self.spec.decoder.encode_prompt(prompt_ids, self.input_shape[1])
        return [int(t) for t in self.infer(x)[0]]

    def _guard(self, fn):
        """Run a protocol step; any failure once frames may have moved ends the session
        (its material is burned), since the two sides can no longer be in step."""
        try:
            return fn()
        except Exception:
            self.close(failed=True)
            raise

    def close(self, failed: bool = False) -> None:
        if self._chan is None:
            return
        try:
            if not failed and not self._chan._closed:
                with self.meter.in_phase("control"):
                    self._chan.send_json("ctl", {"op": "finish"})
                    self.server_summary = self._chan.recv_json("ctl.summary")
        finally:
            if self._role is not None:
                self._role.close(failed=failed)
            self._chan.close()
            self._chan = None
            for ch in (self._grpc, self._dealer_grpc):
                if ch is not None:
                    ch.close()

    # -- metrics -------------------------------------------------------------------------------
    def _decode_figures(self, runs: int) -> dict:
        """Per-token figures of the last generation: prefill (with the first token), then
        the decode steps (meter scopes "prefill" and "decode"; bytes both directions)."""
        steps = max(1, self.new_tokens - 1) * runs
        out = {}
        for scope, n in (("prefill", runs), ("decode", steps)):
            c = self.meter.total("online", scope).as_dict()
            out[scope] = {"bytes": (c["bytes_sent"] + c["bytes_received"]) / n,
                          "rounds": c["rounds"] / n}
        marks = getattr(self._role, "token_marks", None) or []
        if len(marks) >= 2:
            out["prefill"]["seconds"] = marks[1] - marks[0]
            gaps = sorted(b - a for a, b in zip(marks[1:], marks[2:]))
            if gaps:
                out["decode"]["seconds"] = gaps[len(gaps) // 2]
        return out

    def peak_storage_bytes(self) -> int:
        return self._role.peak_storage_bytes() if self._role else 0

    def record(self) -> dict:
        """This session's figures in the benchmark record schema (client's view + parties)."""
        s = self.meter.summary()
        runs = max(1, self._runs)
        online = dict(s["online"])
        for k in ("bytes_sent", "bytes_received", "frame_bytes_sent", "frame_bytes_received",
                  "messages_sent", "messages_received", "rounds"):
            online[k] = online[k] / runs
        online["seconds"] = sorted(self.online_seconds)[len(self.online_seconds) // 2] \
            if self.online_seconds else 0.0
        client_dealer = self.meter.total("offline", "dealer").as_dict()
        parties = {"client": {**s, "peak_rss_bytes": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024, "children_peak_rss_bytes":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}}
        server = self.server_summary or {}
        if server:
            parties["server"] = server
        dealer_sent = client_dealer["bytes_received"] + server.get("dealer", {}).get("bytes_received", 0)
        dealer_frames = client_dealer["frame_bytes_received"] + server.get("dealer", {}).get(
            "frame_bytes_received", 0)
        parties["dealer"] = {"offline": {"bytes_sent": dealer_sent}}
        off_total = s["offline"]["bytes_sent"] + server.get("offline", {}).get("bytes_sent", 0) \
            + dealer_sent
        on_total = s["online"]["bytes_sent"] + server.get("online", {}).get("bytes_sent", 0)
        off_frames = s["offline"]["frame_bytes_sent"] + server.get("offline", {}).get(
            "frame_bytes_sent", 0) + dealer_frames
        on_frames = s["online"]["frame_bytes_sent"] + server.get("online", {}).get(
            "frame_bytes_sent", 0)
        params = {"input_shape": list(self.input_shape)}
        if self.spec.decoder is not None:
            params.update(context=self.input_shape[1], new_tokens=self.new_tokens)
        return {
            "model": self.spec.name, "protocol": self.family.name,
            "params": params,
            "offline": s["offline"], "online": online, "parties": parties,
            "offline_per_inference": {k: v / runs for k, v in s["offline"].items()},
            "total_bytes": (off_total + on_total) / runs,
            "frame_bytes": (off_frames + on_frames) / runs,
            "client_storage_bytes": self.peak_storage_bytes(),
            "inferences_per_session": runs,
            "dealer": self.server_dealer,
            **({"dealer_for": self.family.dealer_for} if self.family.dealer_for else {}),
            "config_digest": self.config.digest(),
            "output_policy": self.output_policy,
            "version": VERSION,
            "reveals": [r.__dict__ for r in self.meter.reveals],
            **({"decode": self._decode_figures(runs)} if self.spec.decoder is not None else {}),
            "links": {"dealer": client_dealer,
                      "control": self.meter.total("control").as_dict()},
        }
