"""Per-client query budget (``server.budget``): reservations, spending, release, identity."""

from __future__ import annotations

import threading

import pytest

from protocols import tls
from server.budget import BudgetExceeded, QueryBudget, client_identity, peer_host


def test_reserve_spend_release_and_refusal_naming_the_numbers():
    b = QueryBudget(5)
    b.reserve("a", 3)
    b.spend("a", 1)
    assert b.usage("a") == {"limit": 5, "spent": 1, "reserved": 2, "left": 2}
    with pytest.raises(BudgetExceeded) as err:
        b.reserve("a", 3)
    msg = str(err.value)
    assert "allows 5 queries per client" in msg and "used 1" in msg and "2 left" in msg \
        and "asks for 3" in msg
    b.release("a", 2)                     # the session ended with 2 unused
    assert b.usage("a")["left"] == 4
    b.reserve("a", 4)
    b.spend("a", 4)
    with pytest.raises(BudgetExceeded, match="0 left"):
        b.reserve("a", 1)
    b.reserve("b", 5)                     # another client has its own budget
    with pytest.raises(BudgetExceeded):
        b.spend("b", 6)                   # more than reserved


def test_unlimited_by_default_but_counted():
    b = QueryBudget()
    b.reserve("a", 10_000)
    b.spend("a", 7)
    assert b.usage("a") == {"limit": None, "spent": 7, "reserved": 9_993, "left": None}
    with pytest.raises(ValueError):
        QueryBudget(0)


def test_reservations_are_thread_safe():
    b = QueryBudget(100)
    wins = []

    def grab():
        for _ in range(50):
            try:
                b.reserve("a", 1)
                wins.append(1)
            except BudgetExceeded:
                pass

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 100 and b.usage("a")["reserved"] == 100


class FakeContext:
    def __init__(self, auth=None, peer="ipv4:127.0.0.1:40001"):
        self.auth, self._peer = auth or {}, peer

    def auth_context(self):
        return self.auth

    def peer(self):
        return self._peer


def test_identity_is_the_certificate_fingerprint_or_the_address(tmp_path):
    one = tls.make_certs(tmp_path / "one")
    two = tls.make_certs(tmp_path / "two", ca_dir=tmp_path / "one", roles=("client",))
    ids = [client_identity(FakeContext({"x509_pem_cert": [f["client"].read_cert()],
                                        "x509_common_name": [b"client"]}), insecure=False)
           for f in (one, two)]
    assert ids[0].startswith("cert:") and ids[0] != ids[1]   # same CN, other certificates
    same = client_identity(FakeContext({"x509_pem_cert": [one["client"].read_cert()]},
                                       peer="ipv4:10.0.0.9:5"), insecure=False)
    assert same == ids[0]                                      # not tied to the address
    assert client_identity(FakeContext(peer="ipv4:127.0.0.1:40001"), insecure=True) == \
        client_identity(FakeContext(peer="ipv4:127.0.0.1:40999"), insecure=True) == \
        "addr:127.0.0.1"
    assert peer_host("ipv6:[::1]:5123") == "[::1]" and peer_host("unix:/tmp/s") == "unix:/tmp/s"
