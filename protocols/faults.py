"""Fault injection for tests: a failpoint that kills or freezes this process mid-protocol.

Test-only. Set in the environment of the process to be hit, never in production:

    PINFER_FAILPOINT="<party>:<tag-prefix>:<n>:<action>"

``party`` is the Meter's party name (``client``, ``server`` or ``dealer``); ``action`` is
``kill`` (SIGKILL itself) or ``stop`` (SIGSTOP itself: frozen until SIGCONT). The failpoint
fires when a Channel of this process is about to send its ``n``-th frame (n >= 1, counted
over all channels and sessions of the process) whose tag starts with ``tag-prefix``,
before that frame leaves; just before, it prints ``failpoint: <value> fired at <unix time>``
to stderr so that a harness can time detection from that instant. An unset variable costs
one attribute check per send; a malformed one raises ``FailpointError`` at the first send.

How tags map to protocol steps (``mpc``; names from the model's layer scopes):
  handshake   ``Hello`` is a unary RPC, not a frame: freeze or kill the process from
              outside before the peer connects (no failpoint).
  offline     client ``dealer.request`` (its only offline frame); server ``dealer.request``
              then ``const.<layer>.weight`` (masked weights to the client); dealer
              ``dealer.seed`` (one per party), then ``dealer.<array>`` item by item
              (``c``, ``msb``, ``mid``: corrections, to the server only; comparison key
              words such as ``s_cw``, to both), ``dealer.done``.
  online      both parties ``<layer>.open`` and ``<layer>.trunc`` (one exchange each per
              product and truncation; digits-cnn: conv1, act1, conv2, act2, fc), then the
              output policy's ``output_policy.*`` (a classifier's label) and the server's
              ``output`` share (prefix ``output`` matches both); the client sends ``ctl``
              before each inference.
  control     client ``ctl`` (infer, finish), server ``ctl.summary``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

ENV = "PINFER_FAILPOINT"
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
PARTIES = ("client", "server", "dealer")


class FailpointError(ValueError):
    """A malformed ``PINFER_FAILPOINT`` value."""


@dataclass(frozen=True)
class Failpoint:
    party: str
    prefix: str
    n: int
    action: str

    def value(self) -> str:
        return f"{self.party}:{self.prefix}:{self.n}:{self.action}"


def parse(value: str) -> Failpoint:
    """``"party:prefix:n:action"`` -> Failpoint; raises FailpointError naming the problem."""
    parts = value.split(":")
    if len(parts) != 4:
        raise FailpointError(f"{ENV}={value!r}: expected <party>:<tag-prefix>:<n>:<action>")
    party, prefix, n, action = parts
    if party not in PARTIES:
        raise FailpointError(f"{ENV}={value!r}: party {party!r} is not one of {PARTIES}")
    if not prefix:
        raise FailpointError(f"{ENV}={value!r}: empty tag prefix")
    if not n.isdigit() or int(n) < 1:
        raise FailpointError(f"{ENV}={value!r}: n={n!r} must be an integer >= 1")
    if action not in ACTIONS:
        raise FailpointError(f"{ENV}={value!r}: action {action!r} is not one of "
                             f"{sorted(ACTIONS)}")
    return Failpoint(party, prefix, int(n), action)


_UNREAD = object()
_point = _UNREAD          # Failpoint, None (unset) or _UNREAD
_count = 0
_lock = threading.Lock()


def reset() -> None:
    """Forget the parsed value and the count (tests change the environment)."""
    global _point, _count
    with _lock:
        _point, _count = _UNREAD, 0


def on_send(party: str, tag: str) -> None:
    """Called by ``Channel.send`` before a frame leaves; fires the failpoint if due."""
    global _point, _count
    if _point is None:
        return
    with _lock:
        if _point is _UNREAD:
            raw = os.environ.get(ENV, "")
            _point = parse(raw) if raw else None
        fp = _point
        if fp is None or party != fp.party or not tag.startswith(fp.prefix):
            return
        _count += 1
        if _count != fp.n:
            return
    print(f"failpoint: {fp.value()} fired at {time.time():.6f} (tag {tag!r})",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), ACTIONS[fp.action])
