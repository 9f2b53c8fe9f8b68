"""The server's gRPC service: handshake, then one session thread per client stream.

A session runs the family's server role: offline (material from the dealer, masked
weights to the client), then one online run per ``infer`` control message from the
client, until ``finish``, when the server reports its own meter back (control traffic,
not counted as protocol bytes). Any failure aborts the stream with a message for the
client, and the session's material is burned. Other sessions are unaffected.

Each family runs the model followed by the configured output policy
(``models.output_policy``: the label, the top-k or the full output, computed inside the
protocol before the reveal). Each client's queries are counted against ``--query-budget``
(``server.budget``): reserved at Hello (refused with RESOURCE_EXHAUSTED when they do not
fit), spent per ``infer``, the unused rest returned when the session ends.
"""

from __future__ import annotations

import logging
import resource
import secrets
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from models import output_policy
from protocols import tls
from protocols.config import Config
from protocols.endpoints import dial, wait_ready
from protocols.families.base import RoleContext
from protocols.grpc_link import open_stream, serve_stream, session_id_of
from protocols.metering import Meter
from protocols.session import VERSION, HandshakeError, check_hello
from protocols.wire import pinfer_pb2 as pb
from protocols.wire import pinfer_pb2_grpc as rpc
from server.budget import BudgetExceeded, QueryBudget, client_identity

log = logging.getLogger("pinfer.server")
PENDING_TTL_S = 60.0
DEALER_CONNECT_S = 3.0   # a dead or frozen dealer fails the session within it; a restarted
                         # one is found again (reconnect backoff: 2 keepalives, 2 s default)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def children_peak_rss_bytes() -> int:
    """Largest finished child (a crypten worker), 0 if none."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


class PartyServicer(rpc.PartyServicer):
    def __init__(self, *, spec, weights, families: dict, config: Config, store_root,
                 dealer_target: str | None, dealer_tls: tls.TlsFiles | None, insecure: bool,
                 ee_deployment: str | None = None, query_budget: int | None = None):
        self.spec = spec
        # the model as each family runs it: its forward followed by the output policy
        # (models.output_policy; OutputPolicyError here if a family cannot serve it)
        self.specs = {name: output_policy.apply(spec, config, name) for name in families}
        self.budget = QueryBudget(query_budget)
        self.ee_deployment = ee_deployment
        self.weights = weights
        self.families = families
        self.config = config
        self.store_root = store_root
        self.dealer_target = dealer_target
        self.dealer_tls = dealer_tls
        self.insecure = insecure
        self._pending: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._dealer_channel = None
        self.sessions_done = 0
        self.sessions_failed = 0

    # -- handshake ----------------------------------------------------------------------------
    def Hello(self, request, context):
        if not self.insecure and tls.peer_role(context) != "client":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only a client certificate may connect")
        try:
            shape = check_hello(request, spec=self.spec, protocols=sorted(self.families),
                                config_digest=self.config.digest(), config=self.config)
        except HandshakeError as exc:
            log.info("handshake refused: %s", exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        family = self.families[request.protocol]
        if family.uses_dealer and not self.dealer_target:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol {family.name} needs a dealer; this server has none (--dealer)")
        who = client_identity(context, self.insecure)
        queries = request.inferences * shape[0]         # server.budget: one per example
        try:
            self.budget.reserve(who, queries)
        except BudgetExceeded as exc:
            log.info("session refused for %s: %s", who, exc)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        sid = secrets.token_hex(16)
        now = time.monotonic()
        with self._lock:
            for old in [k for k, v in self._pending.items() if now - v[3] > PENDING_TTL_S]:
                _, _, _, _, _, old_who, old_queries = self._pending.pop(old)
                self.budget.release(old_who, old_queries)
            self._pending[sid] = (family, shape, request.inferences, now, request.new_tokens,
                                  who, queries)
        return pb.HelloReply(session_id=sid, version=VERSION,
                             dealer=family.dealer_label)

    # -- sessions -----------------------------------------------------------------------------
    def Session(self, request_iterator, context):
        sid = session_id_of(context)
        with self._lock:
            entry = self._pending.pop(sid, None)
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown or expired session; say Hello first")
        family, shape, inferences, _, new_tokens, who, _ = entry
        meter = Meter("server")
        chan = serve_stream(request_iterator, meter, link="peer", session_id=sid,
                            transport=self.config.transport, integrity=self.insecure)
        ctx = RoleContext(spec=self.specs[family.name], config=self.config, channel=chan,
                          meter=meter, session_id=sid, input_shape=shape, inferences=inferences,
                          new_tokens=new_tokens, ee_deployment=self.ee_deployment,
                          store_root=self.store_root,
                          dealer_connect=(lambda: self._connect_dealer(meter, sid)))
        threading.Thread(target=self._run, args=(family, ctx, who), daemon=True,
                         name=f"session-{sid[:8]}").start()
        yield from chan.outgoing()

    def _connect_dealer(self, meter: Meter, sid: str):
        with self._lock:
            if self._dealer_channel is None:
                self._dealer_channel = dial(self.dealer_target, self.dealer_tls,
                                            self.config.transport)
        wait_ready(self._dealer_channel, self.dealer_target, DEALER_CONNECT_S)
        stub = rpc.DealerStub(self._dealer_channel)
        return open_stream(stub.Session, meter, link="dealer", session_id=sid,
                           transport=self.config.transport,
                           integrity=self.dealer_tls is None)

    def _run(self, family, ctx: RoleContext, who: str = "") -> None:
        chan, meter = ctx.channel, ctx.meter
        role = None
        failed = True
        runs, batch = 0, ctx.input_shape[0]
        try:
            role = family.server(ctx, self.weights)
            t0 = time.perf_counter()
            role.offline()
            meter.add_seconds("offline", time.perf_counter() - t0)
            while True:
                with meter.in_phase("control"):
                    ctl = chan.recv_json("ctl")
                op = ctl.get("op") if isinstance(ctl, dict) else None
                if op == "infer":
                    if runs >= ctx.inferences:      # the session's reservation (server.budget)
                        raise BudgetExceeded(f"query budget: this session reserved "
                                             f"{ctx.inferences} inferences; no more are served")
                    self.budget.spend(who, batch)
                    runs += 1
                    t0 = time.perf_counter()
                    role.online()
                    meter.add_seconds("online", time.perf_counter() - t0)
                elif op == "finish":
                    with meter.in_phase("control"):
                        chan.send_json("ctl.summary", self._summary(meter, role))
                    failed = False
                    break
                else:
                    raise ValueError(f"unknown control message {ctl!r}")
            log.info("session %s: %s done", ctx.session_id[:8], family.name)
        except Exception as exc:  # noqa: BLE001 - sent to the client, logged, session burned
            log.warning("session %s failed: %s", ctx.session_id[:8], exc)
            chan.abort(f"server: {exc}")
        finally:
            self.budget.release(who, (ctx.inferences - runs) * batch)
            if role is not None:
                role.close(failed=failed)
            chan.close()
            with self._lock:
                if failed:
                    self.sessions_failed += 1
                else:
                    self.sessions_done += 1

    @staticmethod
    def _summary(meter: Meter, role) -> dict:
        out = meter.summary()
        out["dealer"] = meter.total("offline", "dealer").as_dict()
        out["peak_rss_bytes"] = peak_rss_bytes()
        out["children_peak_rss_bytes"] = children_peak_rss_bytes()
        out["peak_storage_bytes"] = role.peak_storage_bytes()
        return out


def _lenient(message_type):
    """A request deserializer that refuses an undecodable message with one log line.

    gRPC's default (``FromString`` raising) logs a traceback; when a deserializer returns
    None instead, gRPC ends that call with INTERNAL ("Exception deserializing request!")
    just the same, and the session's stream then ends (the session fails and is burned).
    """
    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            log.warning("refused an undecodable %s of %d bytes: %s",
                        message_type.DESCRIPTOR.name, len(data), exc)
            return None
    return decode


def add_to_server(servicer: PartyServicer, server: grpc.Server) -> None:
    """``rpc.add_PartyServicer_to_server`` with ``_lenient`` request deserializers."""
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(
            servicer.Hello, request_deserializer=_lenient(pb.HelloRequest),
            response_serializer=pb.HelloReply.SerializeToString),
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session, request_deserializer=_lenient(pb.Frame),
            response_serializer=pb.Frame.SerializeToString),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("pinfer.v1.Party", handlers),))
    server.add_registered_method_handlers("pinfer.v1.Party", handlers)
