"""Channel: typed, metered, ordered messages between two parties.

``send(tag, tensor)``, ``recv(tag)`` and ``exchange(tag, tensor)`` (both parties send, then
both receive: one round). Two transports share this class: an in-memory pair for unit
tests (two threads) and a gRPC bidirectional stream between processes
(``protocols.grpc_link``). Every frame goes through the codec, so both transports check and
count the same bytes. Every receive has a timeout; a peer that aborts sends an error frame,
and a peer that vanishes ends the stream: both raise ``PeerError`` with a clear message.
"""

from __future__ import annotations

import json
import queue
import threading

import torch

from protocols import faults
from protocols.metering import Meter
from protocols.wire import codec
from protocols.wire import pinfer_pb2 as pb

DEFAULT_RECV_TIMEOUT = 120.0
_CLOSED = object()


class PeerError(RuntimeError):
    """The peer vanished, timed out, or aborted the session."""


class Channel:
    """One party's end of a link. Subclasses move ``pb.Frame`` objects."""

    def __init__(self, meter: Meter, *, link: str, session_id: str,
                 recv_timeout: float = DEFAULT_RECV_TIMEOUT,
                 max_chunk: int = codec.DEFAULT_MAX_CHUNK, integrity: bool = False):
        self.meter = meter
        self.integrity = integrity         # CRC-32 per frame: links without TLS
        self.link = link
        self.session_id = session_id
        self.recv_timeout = recv_timeout
        self.max_chunk = max_chunk
        self._seq = 1
        self._epoch = 0
        self._last_sent = 0
        self._max_received = 0
        self._reassembler = codec.Reassembler(session_id, integrity=integrity)
        self._closed = False

    # -- transport hooks --------------------------------------------------------------------
    def _put(self, frame: pb.Frame) -> None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not implement _put")

    def _get(self, timeout: float):  # pragma: no cover - abstract
        """Next frame; ``_CLOSED`` when the stream ended, a string when it failed;
        raises queue.Empty on timeout."""
        raise TypeError(f"{type(self).__name__} does not implement _get")

    # -- rounds ----------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Both parties call this at the same logical points (each phase of each run)."""
        self._epoch += 1
        self._last_sent = 0
        self._max_received = 0

    def _next_round(self) -> int:
        self._last_sent = max(self._last_sent, self._max_received + 1)
        return self._last_sent

    # -- API -------------------------------------------------------------------------------
    def send(self, tag: str, tensor: torch.Tensor) -> None:
        if self._closed:
            raise PeerError(f"{self.link}: send of {tag!r} on a closed channel")
        faults.on_send(self.meter.party, tag)   # test-only failpoint (PINFER_FAILPOINT)
        round_no = self._next_round()
        frames = codec.encode(tag, tensor, session_id=self.session_id, seq=self._seq,
                              epoch=self._epoch, round_no=round_no, max_chunk=self.max_chunk,
                              integrity=self.integrity)
        self._seq += len(frames)
        payload = sum(len(f.body) for f in frames)
        size = sum(f.ByteSize() for f in frames)
        for frame in frames:
            self._put(frame)
        self.meter.on_send((self.link, self._epoch, round_no), payload, size)

    def recv(self, tag: str) -> torch.Tensor:
        while True:
            try:
                frame = self._get(self.recv_timeout)
            except queue.Empty:
                raise PeerError(f"{self.link}: no frame for {tag!r} within "
                                f"{self.recv_timeout:g} s (peer frozen or too slow)") from None
            if frame is _CLOSED:
                self._closed = True
                raise PeerError(f"{self.link}: peer closed the stream while {tag!r} was due")
            if isinstance(frame, str):  # the transport's description of a failed stream
                self._closed = True
                raise PeerError(f"{self.link}: {frame} (while {tag!r} was due)")
            if frame.error:
                self._closed = True
                raise PeerError(f"{self.link}: peer aborted: {frame.error}")
            done = self._reassembler.feed(frame)
            if done is None:
                continue
            got_tag, tensor, epoch, round_no, payload, size = done
            if got_tag != tag:
                raise codec.FrameError(f"{self.link}: got frame {got_tag!r} where {tag!r} was due")
            if epoch == self._epoch:
                self._max_received = max(self._max_received, round_no)
            self.meter.on_receive((self.link, epoch, round_no), payload, size)
            return tensor

    def exchange(self, tag: str, tensor: torch.Tensor) -> torch.Tensor:
        """Send ours, then receive theirs: one round when both parties do it together.
        Theirs must have our dtype and shape (``recv_like``)."""
        self.send(tag, tensor)
        return self.recv_like(tag, tensor)

    def recv_like(self, tag: str, like: torch.Tensor) -> torch.Tensor:
        """``recv``, refusing a tensor whose dtype or shape differs from ``like``'s (a
        share of the same value): a peer's odd shape must not broadcast into our
        arithmetic."""
        got = self.recv(tag)
        if got.dtype != like.dtype or got.shape != like.shape:
            raise codec.FrameError(f"{self.link}: {tag!r} has dtype {got.dtype} and shape "
                                   f"{list(got.shape)}; expected dtype {like.dtype} and "
                                   f"shape {list(like.shape)}")
        return got

    def send_json(self, tag: str, obj) -> None:
        data = json.dumps(obj, sort_keys=True).encode()
        self.send(tag, torch.frombuffer(bytearray(data), dtype=torch.uint8))

    def recv_json(self, tag: str):
        raw = self.recv(tag)
        if raw.dtype != torch.uint8 or raw.dim() != 1:
            raise codec.FrameError(f"{self.link}: {tag!r} should be a byte string")
        try:
            return json.loads(bytes(raw.numpy()).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise codec.FrameError(f"{self.link}: {tag!r} is not valid JSON: {exc}") from None

    def abort(self, message: str) -> None:
        """Tell the peer why this side stops (best effort), then close."""
        if self._closed:
            return
        try:
            self._put(codec.error_frame(message, session_id=self.session_id, seq=self._seq,
                                        integrity=self.integrity))
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
        self.close()

    def close(self) -> None:
        self._closed = True


class QueueChannel(Channel):
    """Frames through Python queues as serialised bytes (same codec as the network)."""

    def __init__(self, meter: Meter, outbox: queue.Queue, inbox: queue.Queue, **kw):
        super().__init__(meter, **kw)
        self._outbox = outbox
        self._inbox = inbox

    def _put(self, frame: pb.Frame) -> None:
        self._outbox.put(frame.SerializeToString())

    def _get(self, timeout: float):
        item = self._inbox.get(timeout=timeout)
        if item is _CLOSED:
            return _CLOSED
        frame = pb.Frame()
        frame.ParseFromString(item)
        return frame

    def close(self) -> None:
        if not self._closed:
            self._outbox.put(_CLOSED)
        super().close()


def memory_pair(meters: tuple[Meter, Meter], *, link: str = "peer", session_id: str = "test",
                recv_timeout: float = 30.0, max_chunk: int = codec.DEFAULT_MAX_CHUNK):
    """Two connected in-memory channels (party 0's, party 1's) for unit tests."""
    a_to_b: queue.Queue = queue.Queue()
    b_to_a: queue.Queue = queue.Queue()
    kw = dict(link=link, session_id=session_id, recv_timeout=recv_timeout, max_chunk=max_chunk)
    return (QueueChannel(meters[0], a_to_b, b_to_a, **kw),
            QueueChannel(meters[1], b_to_a, a_to_b, **kw))


def run_pair(fn0, fn1, timeout: float = 120.0):
    """Run two party functions in threads; return both results or raise the first error."""
    results: list = [None, None]
    errors: list = [None, None]

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors[i] = exc

    threads = [threading.Thread(target=wrap, args=(i, f), daemon=True)
               for i, f in enumerate((fn0, fn1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"party thread did not finish within {timeout} s")
    for exc in errors:
        if exc is not None:
            raise exc
    return results
