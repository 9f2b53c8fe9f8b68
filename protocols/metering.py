"""Meter: communication counted at the channel, per phase and per scope.

Every frame a channel sends or receives is reported here with its payload bytes (the ring
elements or ciphertexts the protocol moves), its frame bytes (payload plus header, as
serialised) and its round number. Nothing is estimated.

Rounds. A frame carries the round in which it was sent. A party gives its next frame the
round ``max(last round it sent, 1 + largest round it has received)`` within the current
epoch (a Lamport clock over receives). So frames sent without waiting for an answer share
a round, and a frame sent after an answer starts a new one: an ``exchange`` (both send,
then both receive) is one round; a request and its reply are two. Both parties start a new
epoch at the same points (each phase of each inference), which resets the clock. The
rounds of a phase or scope are the distinct (link, epoch, round) triples of its frames.
Each peer link (the other party, the dealer) keeps its own clock, so a phase's rounds add
up over links (links are used one after another).

The reveal log lists every value deliberately opened in the clear to a party (outputs,
declared leaks), by scope; masked openings such as Beaver's x - a are not reveals.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

PHASES = ("offline", "online", "control")


@dataclass
class Counters:
    """Traffic of one (phase, scope) cell, from one party's point of view."""

    payload_sent: int = 0
    payload_received: int = 0
    frame_sent: int = 0
    frame_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: set[tuple] = field(default_factory=set)  # (link, epoch, round)

    def add(self, other: "Counters") -> None:
        self.payload_sent += other.payload_sent
        self.payload_received += other.payload_received
        self.frame_sent += other.frame_sent
        self.frame_received += other.frame_received
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received
        self.rounds |= other.rounds

    def as_dict(self) -> dict:
        return {
            "bytes_sent": self.payload_sent,
            "bytes_received": self.payload_received,
            "frame_bytes_sent": self.frame_sent,
            "frame_bytes_received": self.frame_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "rounds": len(self.rounds),
        }


@dataclass(frozen=True)
class Reveal:
    """A value opened in the clear on purpose."""

    scope: str
    phase: str
    to: str  # party that learns it
    tag: str
    shape: tuple[int, ...]
    what: str


class Meter:
    """Per-party counters by phase and scope, plus the reveal log. Thread-safe."""

    clock = staticmethod(time.perf_counter)     # seconds; tests may give a fake clock

    def __init__(self, party: str):
        self.party = party
        self._lock = threading.Lock()
        self._phase = "control"
        self._scopes: list[str] = []
        self._cells: dict[tuple[str, str], Counters] = {}
        self.reveals: list[Reveal] = []
        self.seconds: dict[str, float] = {}
        self._mark = self.clock()
        self._scope_seconds: dict[tuple[str, str], float] = {}

    def _charge(self) -> None:
        """Add the time since the last scope or phase change to the current (phase, scope):
        wall time spent in a scope itself, its children excluded."""
        now = self.clock()
        with self._lock:
            key = (self._phase, self.scope)
            self._scope_seconds[key] = self._scope_seconds.get(key, 0.0) + now - self._mark
            self._mark = now

    def scope_seconds(self, phase: str) -> dict[str, float]:
        """Wall seconds per scope of ``phase`` (exclusive of child scopes)."""
        with self._lock:
            return {s: v for (ph, s), v in self._scope_seconds.items() if ph == phase}

    # -- context ------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self._phase

    @property
    def scope(self) -> str:
        return ".".join(self._scopes)

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        self._charge()
        previous, self._phase = self._phase, phase
        try:
            yield self
        finally:
            self._charge()
            self._phase = previous

    @contextlib.contextmanager
    def in_scope(self, name: str):
        self._charge()
        self._scopes.append(name)
        try:
            yield self
        finally:
            self._charge()
            self._scopes.pop()

    def _cell(self) -> Counters:
        key = (self._phase, self.scope)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = Counters()
        return cell

    # -- events from channels -------------------------------------------------------------
    def on_send(self, round_id: tuple, payload: int, frame: int) -> None:
        with self._lock:
            cell = self._cell()
            cell.payload_sent += payload
            cell.frame_sent += frame
            cell.messages_sent += 1
            cell.rounds.add(round_id)

    def on_receive(self, round_id: tuple, payload: int, frame: int) -> None:
        with self._lock:
            cell = self._cell()
            cell.payload_received += payload
            cell.frame_received += frame
            cell.messages_received += 1
            cell.rounds.add(round_id)

    def reveal(self, to: str, tag: str, shape, what: str) -> None:
        with self._lock:
            self.reveals.append(Reveal(self.scope, self._phase, to, tag, tuple(shape), what))

    def add_seconds(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    # -- reading --------------------------------------------------------------------------
    def total(self, phase: str, scope_prefix: str = "") -> Counters:
        """Counters of one phase, summed over scopes that start with ``scope_prefix``."""
        out = Counters()
        with self._lock:
            for (ph, scope), cell in self._cells.items():
                if ph == phase and (not scope_prefix or scope == scope_prefix
                                    or scope.startswith(scope_prefix + ".")):
                    out.add(cell)
        return out

    def scopes(self, phase: str) -> dict[str, Counters]:
        with self._lock:
            return {s: c for (ph, s), c in self._cells.items() if ph == phase}

    def summary(self) -> dict:
        """The two phases as record fields (client's view): seconds, bytes, rounds."""
        out = {}
        for phase in ("offline", "online"):
            d = self.total(phase).as_dict()
            d["seconds"] = self.seconds.get(phase, 0.0)
            out[phase] = d
        return out

    def snapshot(self) -> dict[tuple[str, str], Counters]:
        with self._lock:
            copy = {}
            for key, cell in self._cells.items():
                c = Counters()
                c.add(cell)
                copy[key] = c
            return copy

    def since(self, snapshot: dict[tuple[str, str], Counters], phase: str) -> Counters:
        """Traffic of ``phase`` added after ``snapshot`` was taken (rounds: new ones only)."""
        now = self.total(phase)
        before = Counters()
        for (ph, _), cell in snapshot.items():
            if ph == phase:
                before.add(cell)
        diff = Counters(
            now.payload_sent - before.payload_sent,
            now.payload_received - before.payload_received,
            now.frame_sent - before.frame_sent,
            now.frame_received - before.frame_received,
            now.messages_sent - before.messages_sent,
            now.messages_received - before.messages_received,
            now.rounds - before.rounds,
        )
        return diff
