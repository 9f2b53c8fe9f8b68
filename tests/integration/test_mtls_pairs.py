"""mTLS between every pair of processes: the real server and dealer processes refuse a
plaintext channel, a TLS client without a certificate, a certificate from another CA and
an expired one; the client's and the server's own certificates are accepted (client ->
server, client -> dealer, server -> dealer)."""

from __future__ import annotations

import pytest

from benchmarks.launch import Deployment
from benchmarks.reliability_inputs import bad_credentials as _bad_credentials
from benchmarks.reliability_inputs import ready as _ready
from protocols import tls


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    work = tmp_path_factory.mktemp("mtls")
    with Deployment("digits-mlp", ["mpc"], certs=work / "certs", workdir=work) as d:
        yield d


@pytest.mark.parametrize("endpoint", ["server", "dealer"])
def test_bad_client_credentials_are_refused(dep, tmp_path, endpoint):
    address = dep.server_address if endpoint == "server" else dep.dealer_address
    refused = {name: not _ready(address, creds)
               for name, creds in _bad_credentials(dep, tmp_path).items()}
    assert all(refused.values()), refused


@pytest.mark.parametrize("role,endpoint", [("client", "server"), ("client", "dealer"),
                                           ("server", "dealer")])
def test_each_pair_connects_with_its_own_certificate(dep, role, endpoint):
    address = dep.server_address if endpoint == "server" else dep.dealer_address
    assert _ready(address, tls.channel_credentials(tls.TlsFiles.for_role(dep.certs, role)))


def test_processes_are_still_healthy_after_the_refusals(dep, tmp_path):
    from benchmarks.sessions import run_session
    import torch
    x = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(1, 64)
    outs, rec = run_session(dep, "digits-mlp", "mpc", [x], tmp_path)
    assert outs[0].shape[-1] == 10 and rec["online"]["rounds"] > 0
    assert all(p.popen.poll() is None for p in dep.procs)
