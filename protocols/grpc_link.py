"""Channel over a gRPC bidirectional stream, and the gRPC options both ends use.

The stream is read by a background thread into a queue, so every ``recv`` waits with a
timeout; keepalive pings (interval and timeout from ``TransportConfig``) detect a frozen
or vanished peer within about two intervals, and the stream then ends with an error that
``recv`` raises as ``PeerError``. Messages are chunked below the message limit by the
codec; the limits are raised anyway so a full chunk plus header always fits.
"""

from __future__ import annotations

import queue
import threading

import grpc

from protocols.channel import _CLOSED, Channel
from protocols.config import TransportConfig
from protocols.metering import Meter
from protocols.wire import pinfer_pb2 as pb

MAX_MESSAGE = 8 * 1024 * 1024
SESSION_KEY = "pinfer-session"


def channel_options(t: TransportConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", t.keepalive_ms),
        ("grpc.keepalive_timeout_ms", t.keepalive_ms),
        ("grpc.http2.ping_timeout_ms", t.keepalive_ms),  # default 60 s; ~2 s detection with 1 s
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # a connection attempt (TCP + TLS) to a frozen peer gives up after 2 keepalive
        # intervals, and a restarted peer is dialled again within as long (default 20 s, 120 s)
        ("grpc.min_reconnect_backoff_ms", 2 * t.keepalive_ms),
        ("grpc.max_reconnect_backoff_ms", 2 * t.keepalive_ms),
    ]


def server_options(t: TransportConfig) -> list[tuple[str, int]]:
    return channel_options(t) + [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", max(100, t.keepalive_ms // 2)),
        ("grpc.http2.min_ping_interval_without_data_ms", max(100, t.keepalive_ms // 2)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def describe_rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"peer unreachable or gone ({name}: {details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"peer did not answer in time ({name})"
    if code is None and not details:     # a server's request stream: the client went away
        return "peer cancelled the stream or vanished"
    return f"{name}: {details}"


class StreamChannel(Channel):
    """A Channel whose frames travel on one gRPC stream (either end)."""

    def __init__(self, meter: Meter, *, link: str, session_id: str, transport: TransportConfig,
                 integrity: bool = False):
        super().__init__(meter, link=link, session_id=session_id,
                         recv_timeout=transport.recv_timeout_s,
                         max_chunk=transport.max_chunk_bytes, integrity=integrity)
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self._call = None
        self._out_ended = False

    # outgoing frames, for the gRPC runtime to pull
    def outgoing(self):
        while True:
            item = self._out.get()
            if item is _CLOSED:
                return
            yield item

    def _read(self, iterator) -> None:
        try:
            for frame in iterator:
                self._in.put(frame)
            self._in.put(_CLOSED)
        except grpc.RpcError as exc:
            self._in.put(describe_rpc_error(exc))
        except Exception as exc:  # noqa: BLE001 - surfaced to recv as a clear error
            self._in.put(f"stream failed: {exc}")

    def start_reader(self, iterator) -> None:
        threading.Thread(target=self._read, args=(iterator,), daemon=True,
                         name=f"read-{self.link}").start()

    def _put(self, frame: pb.Frame) -> None:
        self._out.put(frame)

    def _get(self, timeout: float):
        return self._in.get(timeout=timeout)

    def close(self) -> None:
        # End the outgoing stream once, even when the peer closed, failed or aborted first
        # (``recv`` marks the channel closed then): otherwise the gRPC worker thread that
        # pulls ``outgoing()`` waits forever, and a server runs out of workers.
        if not self._out_ended:
            self._out_ended = True
            self._out.put(_CLOSED)
        super().close()

    def cancel(self) -> None:
        self.close()
        if self._call is not None:
            self._call.cancel()


def open_stream(method, meter: Meter, *, link: str, session_id: str,
                transport: TransportConfig, integrity: bool = False) -> StreamChannel:
    """Client end: call a stream-stream ``method`` (a stub attribute) and wrap it.
    ``integrity``: CRC-32 on every frame, for links without TLS."""
    chan = StreamChannel(meter, link=link, session_id=session_id, transport=transport,
                         integrity=integrity)
    call = method(chan.outgoing(), metadata=((SESSION_KEY, session_id),))
    chan._call = call
    chan.start_reader(call)
    return chan


def serve_stream(request_iterator, meter: Meter, *, link: str, session_id: str,
                 transport: TransportConfig, integrity: bool = False) -> StreamChannel:
    """Server end: wrap the request iterator; the servicer yields ``chan.outgoing()``."""
    chan = StreamChannel(meter, link=link, session_id=session_id, transport=transport,
                         integrity=integrity)
    chan.start_reader(request_iterator)
    return chan


def session_id_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == SESSION_KEY:
            return value
    return ""
