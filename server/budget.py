"""Per-client query budget: ``python -m server --query-budget N`` (default: unlimited).

Every answered query helps model extraction, so a server may cap how many each client
gets. A query is one example: a session of ``inferences`` inferences on a batch of B
examples asks for inferences x B queries (a decoder's inference, one generation, counts
as one per sequence).

Clients are told apart by their certificate: the SHA-256 fingerprint of the verified
client certificate in the TLS auth context (every client of a deployment may share the
common name "client"; a fingerprint tells two certificates apart). With ``--insecure``
(no certificates) by the peer's address without its port, so all clients on one host
share a budget there.

Enforcement, in two places:
  1. at Hello, the session's queries are reserved: if spent + reserved + asked exceeds
     the budget, the handshake is refused with gRPC RESOURCE_EXHAUSTED, naming the budget
     and what is left (nothing private has moved);
  2. in the session loop, each ``infer`` moves a batch from reserved to spent before the
     online phase runs; an ``infer`` beyond the session's reservation ends the session
     (a client that ignores its own limit gets no more answers).
When a session ends (done or failed) or a pending Hello expires, its unused reservation
is returned. A query counts as spent once its online phase starts, failed or not.
The ledger is in memory, one per server process (a restart resets it), and thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass


class BudgetExceeded(RuntimeError):
    """The client's query budget cannot cover what it asked for."""


@dataclass
class _Account:
    spent: int = 0
    reserved: int = 0


class QueryBudget:
    """Queries per client identity; ``limit`` None: unlimited (still counted)."""

    def __init__(self, limit: int | None = None):
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise ValueError(f"query budget {limit!r}: expected an integer >= 1")
        self.limit = limit
        self._accounts: dict[str, _Account] = {}
        self._lock = threading.Lock()

    def _left(self, acct: _Account) -> int | None:
        return None if self.limit is None else self.limit - acct.spent - acct.reserved

    def reserve(self, client: str, queries: int) -> None:
        """Reserve ``queries`` for a new session, or raise ``BudgetExceeded``."""
        with self._lock:
            acct = self._accounts.setdefault(client, _Account())
            left = self._left(acct)
            if left is not None and queries > left:
                raise BudgetExceeded(
                    f"query budget exhausted: this server allows {self.limit} queries per "
                    f"client; this client has used {acct.spent}, {acct.reserved} are "
                    f"reserved by its open sessions, {left} left, and the session asks for "
                    f"{queries}")
            acct.reserved += queries

    def spend(self, client: str, queries: int) -> None:
        """Move ``queries`` of a reservation to spent (an inference starts)."""
        with self._lock:
            acct = self._accounts[client]
            if queries > acct.reserved:
                raise BudgetExceeded(f"query budget: {queries} queries asked, only "
                                     f"{acct.reserved} reserved for this client")
            acct.reserved -= queries
            acct.spent += queries

    def release(self, client: str, queries: int) -> None:
        """Return an unused reservation (a session ended, a Hello expired)."""
        if queries <= 0:
            return
        with self._lock:
            acct = self._accounts.get(client)
            if acct is not None:
                acct.reserved = max(0, acct.reserved - queries)

    def usage(self, client: str) -> dict:
        with self._lock:
            acct = self._accounts.get(client, _Account())
            return {"limit": self.limit, "spent": acct.spent, "reserved": acct.reserved,
                    "left": self._left(acct)}


def client_identity(context, insecure: bool) -> str:
    """Who is asking: "cert:<sha256 of the client certificate, 16 hex>" under mTLS,
    "addr:<peer address without port>" in insecure mode."""
    if not insecure:
        auth = context.auth_context() or {}
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if pem:
            return "cert:" + hashlib.sha256(_der(pem)).hexdigest()[:16]
        names = auth.get("x509_common_name") or []
        if names:
            return "cn:" + names[0].decode(errors="replace")
    return "addr:" + peer_host(context.peer() or "")


def peer_host(peer: str) -> str:
    """gRPC's peer string ("ipv4:127.0.0.1:5123", "ipv6:[::1]:5123", "unix:...") without
    the port."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0] if rest.startswith("[") else rest
    return peer


def _der(pem: bytes) -> bytes:
    """The certificate's DER bytes (the PEM text itself if it does not parse)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    except ValueError:
        return pem
