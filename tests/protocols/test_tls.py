"""mTLS for the gRPC endpoints: real handshakes against a tiny echo server on 127.0.0.1."""
from __future__ import annotations

import stat
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from protocols import tls

TIMEOUT = 5
METHOD = "/pinfer.test.Echo/Echo"
REPO = Path(__file__).resolve().parents[2]


class EchoServer:
    """A one-method gRPC server (bytes in, the same bytes out) that records peer roles."""

    def __init__(self, creds: grpc.ServerCredentials | None):
        self.roles: list[str | None] = []

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.roles.append(tls.peer_role(context))
            return request

        handler = grpc.method_handlers_generic_handler(
            "pinfer.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        if creds is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        assert self.port
        self.server.start()

    def call(self, channel_creds: grpc.ChannelCredentials | None, host: str = "127.0.0.1",
             options=()) -> bytes:
        target = f"{host}:{self.port}"
        channel = (grpc.insecure_channel(target) if channel_creds is None
                   else grpc.secure_channel(target, channel_creds, options=list(options)))
        with channel:
            return channel.unary_unary(METHOD)(b"ping", timeout=TIMEOUT)

    def stop(self):
        self.server.stop(None)


@pytest.fixture
def certs(tmp_path):
    return tmp_path / "certs", tls.make_certs(tmp_path / "certs")


@pytest.fixture
def server(certs):
    s = EchoServer(tls.server_credentials(certs[1]["server"]))
    yield s
    s.stop()


def assert_refused(server: EchoServer, creds, **kw):
    with pytest.raises(grpc.RpcError) as e:
        server.call(creds, **kw)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    assert server.roles == []  # the handler never ran


def test_valid_client_cert_succeeds_and_server_sees_role(server, certs):
    assert server.call(tls.channel_credentials(certs[1]["client"])) == b"ping"
    assert server.roles == ["client"]


def test_every_role_cert_works_as_client_cert(server, certs):
    for role in ("dealer", "server", "client"):
        assert server.call(tls.channel_credentials(certs[1][role])) == b"ping"
    assert server.roles == ["dealer", "server", "client"]


def test_localhost_dns_name_and_target_override(server, certs):
    creds = tls.channel_credentials(certs[1]["client"])
    assert server.call(creds, host="localhost") == b"ping"
    assert server.call(creds, options=tls.channel_options("localhost")) == b"ping"


def test_hostname_not_in_san_is_refused(tmp_path):
    files = tls.make_certs(tmp_path, hosts=("example.invalid",))
    s = EchoServer(tls.server_credentials(files["server"]))
    try:
        assert_refused(s, tls.channel_credentials(files["client"]))
        assert s.call(tls.channel_credentials(files["client"]),
                      options=tls.channel_options("example.invalid")) == b"ping"
    finally:
        s.stop()


def test_plaintext_client_is_refused(server):
    assert_refused(server, None)


def test_tls_client_without_certificate_is_refused(server, certs):
    assert_refused(server, grpc.ssl_channel_credentials(root_certificates=certs[1]["client"].read_ca()))


def test_client_cert_from_other_ca_is_refused(server, certs, tmp_path):
    other = tls.make_certs(tmp_path / "other", ca_name="other-ca")["client"]
    # Trusts the right CA for the server, but presents a certificate the server's CA never signed.
    creds = tls.channel_credentials(tls.TlsFiles(ca=certs[1]["client"].ca, cert=other.cert, key=other.key))
    assert_refused(server, creds)


def test_server_cert_from_other_ca_is_refused_by_client(server, tmp_path):
    other = tls.make_certs(tmp_path / "other", ca_name="other-ca")["client"]
    assert_refused(server, tls.channel_credentials(other))


def test_expired_client_cert_is_refused(server, certs, tmp_path):
    old = tls.make_certs(tmp_path / "old", roles=("client",), ca_dir=certs[0], expired=True)["client"]
    assert not (tmp_path / "old" / "ca.key").exists()  # the CA key is not copied
    assert_refused(server, tls.channel_credentials(old))


def test_file_modes_and_role_names(certs):
    cert_dir, files = certs
    assert stat.S_IMODE(cert_dir.stat().st_mode) == 0o700
    keys = sorted(cert_dir.glob("*.key"))
    assert [k.name for k in keys] == ["ca.key", "client.key", "dealer.key", "server.key"]
    for k in keys:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600
    assert files["dealer"] == tls.TlsFiles.for_role(cert_dir, "dealer")
    with pytest.raises(ValueError):
        tls.TlsFiles.for_role(cert_dir, "mallory")


def test_loose_key_file_is_refused(certs):
    files = certs[1]["client"]
    files.key.chmod(0o644)
    with pytest.raises(PermissionError):
        tls.channel_credentials(files)


def test_insecure_peer_has_no_role():
    s = EchoServer(None)
    try:
        assert s.call(None) == b"ping"
        assert s.roles == [None]
    finally:
        s.stop()


def test_cli_writes_files_and_prints_no_keys(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "protocols.tls", "--out", str(out), "--host", "127.0.0.1",
                        "--days", "2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["ca.pem", "ca.key"] + [f"{r}.{e}" for r in tls.ROLES for e in ("pem", "key")])
    assert "PRIVATE KEY" not in r.stdout and "BEGIN" not in r.stdout
    for name in names:
        assert str(out / name) in r.stdout
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
