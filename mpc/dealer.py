"""The dealer's side of the offline phase, and the parties' side of fetching material.

Protocol (one dealer link per party, both under the party's offline phase):
  1. the party sends ``dealer.request``: session id, role, fixed-point bits and the Needs;
  2. the dealer checks that both parties of the session ask for the same Needs (by
     digest) and answers with the party's 16-byte seed;
  3. the party then receives its explicit material, item by item, in plan order, and
     stores it as it arrives (the whole pool never sits in memory at once);
  4. ``dealer.done`` closes the exchange.
Communication: each party receives its 16-byte seed and its explicit material
(``mpc.kinds.explicit_shapes``): party 1 the corrections of every product and truncation,
both parties the correction words of FSS comparison keys. 2 rounds per party.
Leaks: the dealer learns the public Needs (shapes) and nothing else; each party learns only
its own seed and corrections, which are uniform given the other party's shares.

The dealer holds each session's two seeds in memory only until both parties fetched them
(or until they expire), then forgets them.
"""

from __future__ import annotations

import threading
import time

import torch

from mpc import kinds, prg
from mpc.protocol import PARTY_NAMES
from protocols.channel import Channel
from protocols.needs import Needs
from protocols.store import MaterialError, MaterialStore

SESSION_TTL_S = 600.0


class DealerError(RuntimeError):
    """A request the dealer refuses."""


class DealerSessions:
    """Seeds of live sessions; thread-safe; forgets a session once both parties fetched."""

    def __init__(self, ttl_s: float = SESSION_TTL_S):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, dict] = {}

    def claim(self, session_id: str, role: str, digest: str) -> tuple[bytes, bytes]:
        now = time.monotonic()
        with self._lock:
            for sid in [s for s, v in self._sessions.items() if now - v["t"] > self.ttl_s]:
                del self._sessions[sid]
            entry = self._sessions.get(session_id)
            if entry is not None and entry.get("done"):
                raise DealerError(f"session {session_id}: both parties already fetched; a "
                                  "session id is never reused")
            if entry is None:
                entry = self._sessions[session_id] = {
                    "s0": prg.new_seed(), "s1": prg.new_seed(), "digest": digest,
                    "fetched": set(), "t": now}
            if entry["digest"] != digest:
                raise DealerError(f"session {session_id}: {role} asked for other material than "
                                  f"its peer (needs digest {digest[:12]} vs {entry['digest'][:12]})")
            if role in entry["fetched"]:
                raise DealerError(f"session {session_id}: {role} already fetched its material")
            entry["fetched"].add(role)
            seeds = entry["s0"], entry["s1"]
            if len(entry["fetched"]) == 2:  # forget the seeds, remember the id until the TTL
                self._sessions[session_id] = {"done": True, "t": entry["t"]}
            return seeds

    def __len__(self) -> int:
        """Sessions whose seeds are still held."""
        with self._lock:
            return sum(1 for v in self._sessions.values() if not v.get("done"))


def serve_party(channel: Channel, sessions: DealerSessions, verified_role: str | None,
                progress=None) -> str:
    """Answer one party's material request. ``verified_role`` comes from its certificate
    (None only with --insecure, where the request's claim is taken). Returns the role."""
    with channel.meter.in_phase("offline"):
        return _serve(channel, sessions, verified_role, progress)


def _serve(channel, sessions, verified_role, progress) -> str:
    channel.begin_epoch()
    req = channel.recv_json("dealer.request")
    try:
        session_id = str(req["session"])
        claimed = str(req["role"])
        frac_bits = int(req["frac_bits"])
        needs = Needs.from_json(req["needs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DealerError(f"malformed dealer request: {exc}") from None
    role = verified_role or claimed
    if role not in PARTY_NAMES:
        raise DealerError(f"role {role!r} may not fetch material")
    if verified_role is not None and claimed != verified_role:
        raise DealerError(f"certificate of role {verified_role!r} asked for {claimed!r} material")
    s0, s1 = sessions.claim(session_id, role, needs.digest())
    party = PARTY_NAMES.index(role)
    channel.send("dealer.seed", torch.frombuffer(bytearray((s0, s1)[party]), dtype=torch.uint8))
    masks: dict[str, torch.Tensor] = {}
    for index in range(len(needs)):
        need = needs.at(index)
        names = kinds.explicit_shapes(need, party)
        if not names:
            continue
        arrays = kinds.dealer_material(need, index, s0, s1, needs, masks)[party]
        for name in names:
            channel.send(f"dealer.{name}", arrays[name])
        if progress is not None:
            progress(index + 1, len(needs))
    channel.send_json("dealer.done", {"items": len(needs), "frac_bits": frac_bits})
    return role


def fetch_material(channel: Channel, store: MaterialStore, *, role: str, session_id: str,
                   frac_bits: int, needs: Needs) -> None:
    """Party side of the exchange above; writes everything into ``store``."""
    channel.begin_epoch()
    channel.send_json("dealer.request", {"session": session_id, "role": role,
                                         "frac_bits": frac_bits, "needs": needs.to_json()})
    seed = channel.recv("dealer.seed")
    if seed.dtype != torch.uint8 or seed.numel() != prg.SEED_BYTES:
        raise MaterialError(f"dealer sent a malformed seed ({seed.numel()} bytes)")
    store.write_seed(bytes(seed.numpy()))
    party = PARTY_NAMES.index(role)
    meter = channel.meter
    for index in range(len(needs)):
        need = needs.at(index)
        arrays = {}
        for name, (shape, dtype) in kinds.explicit_shapes(need, party).items():
            with meter.in_scope(need.scope):       # material metered by the step it serves
                arr = channel.recv(f"dealer.{name}")
            if arr.dtype != dtype or tuple(arr.shape) != tuple(shape):
                raise MaterialError(f"dealer sent {name} of item {index} as {arr.dtype} "
                                    f"{tuple(arr.shape)}; the plan needs {dtype} {tuple(shape)}")
            arrays[name] = arr
        if arrays:
            store.append(index, need.kind, arrays)
    store.finish_writing()
    done = channel.recv_json("dealer.done")
    if done.get("items") != len(needs):
        raise MaterialError(f"dealer made {done.get('items')} items, plan has {len(needs)}")
