"""Mutual TLS for the three pinfer processes (dealer, server, client).

`make_certs` writes a private CA and one EC P-256 certificate per role, each usable both as
a TLS server and as a TLS client certificate (the server also dials the dealer). Every gRPC
endpoint pins that CA: a server requires a client certificate signed by it, a client trusts
no other root. `peer_role` tells a servicer which role connected (the verified common name).

Hostname checks: a channel to ``127.0.0.1:PORT`` passes through the IP-address entry of the
subjectAlternativeName (``hosts`` holds both ``localhost`` and ``127.0.0.1`` by default);
to dial an address that is not in the certificate, pass ``channel_options("localhost")``
(``grpc.ssl_target_name_override``) to ``grpc.secure_channel``.

Private keys are written with mode 0600 from the moment they exist, in a 0700 directory, and
are never logged or printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("dealer", "server", "client")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
TLS_TARGET_NAME_OPTION = "grpc.ssl_target_name_override"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of one party's TLS material: the pinned CA, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_role(cls, cert_dir: str | os.PathLike, role: str) -> "TlsFiles":
        """The files `make_certs` wrote for `role` ("dealer", "server" or "client")."""
        if role not in ROLES:
            raise ValueError(f"unknown TLS role {role!r}; expected one of {ROLES}")
        d = Path(cert_dir)
        return cls(ca=d / "ca.pem", cert=d / f"{role}.pem", key=d / f"{role}.key")

    def read_ca(self) -> bytes:
        return self.ca.read_bytes()

    def read_cert(self) -> bytes:
        return self.cert.read_bytes()

    def read_key(self) -> bytes:
        """The private key (PEM); refuses a key file that group or others may read."""
        return _read_private(self.key)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) as PEM bytes."""
        return self.read_ca(), self.read_cert(), self.read_key()


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} has mode {mode:04o}; private keys must be 0600")
    return path.read_bytes()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`; the file is created with `mode`, never wider."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _san(hosts) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _key_usage(*on: str) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{f: f in on for f in flags})


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(out_dir: str | os.PathLike, hosts=DEFAULT_HOSTS, days: int = 30, *,
               roles=ROLES, ca_name: str = "pinfer-ca", ca_dir: str | os.PathLike | None = None,
               expired: bool = False, not_valid_after: dt.datetime | None = None,
               ) -> dict[str, TlsFiles]:
    """Write a CA and a certificate + key per role into `out_dir`; return {role: TlsFiles}.

    out_dir gets mode 0700, `*.key` files mode 0600. Each role certificate has common name =
    role, SAN = `hosts` (IP addresses as IP entries, the rest as DNS names), and extended key
    usage serverAuth + clientAuth. `ca_dir` signs with an existing CA (its ca.pem, ca.key)
    instead of making a new one named `ca_name`. For tests: `expired=True` makes role
    certificates that expired yesterday; `not_valid_after` sets their end date explicitly.
    """
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    if ca_dir is not None:
        src = Path(ca_dir)
        ca_pem = (src / "ca.pem").read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        ca_key = serialization.load_pem_private_key(_read_private(src / "ca.key"), None)
        if src.resolve() != out.resolve():
            _write(out / "ca.pem", ca_pem, 0o644)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(out / "ca.key", _key_pem(ca_key), 0o600)
        _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if expired:
        start, end = now - dt.timedelta(days=2), now - dt.timedelta(days=1)
    if not_valid_after is not None:
        end = not_valid_after
        start = min(start, end - dt.timedelta(days=1))
    result = {}
    for role in roles:
        files = TlsFiles.for_role(out, role)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(role)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage("digital_signature"), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.key, _key_pem(key), 0o600)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        result[role] = files
    return result


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mTLS: present `files.cert`, require a client certificate from `files.ca`."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client side of mTLS: trust only `files.ca`, present `files.cert` as client certificate."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(target_name: str | None = None) -> list[tuple[str, str]]:
    """gRPC channel options that check the server certificate against `target_name` instead
    of the dialled host (e.g. dial an address absent from the SAN); [] when None."""
    return [] if target_name is None else [(TLS_TARGET_NAME_OPTION, target_name)]


def peer_role(context: grpc.ServicerContext) -> str | None:
    """The common name of the peer's verified certificate ("client", "server", "dealer"), or
    None when the peer is not authenticated by a certificate (insecure mode). Meaningful on a
    server built with `server_credentials`, which rejects unverified client certificates."""
    if context.peer_identities() is None:
        return None
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("x509_common_name") or []
    return names[0].decode() if len(names) == 1 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m protocols.tls",
        description="Make a private CA and mTLS certificates for the dealer, server and "
                    "client (EC P-256; CN = role; serverAuth + clientAuth). Keys are written "
                    "mode 0600 into a 0700 directory and never printed.")
    p.add_argument("--out", required=True, type=Path, help="directory to write into (made 0700)")
    p.add_argument("--host", action="append", dest="hosts", metavar="H",
                   help="host name or IP address for the certificates' SAN; repeat for more "
                        f"(default: {' '.join(DEFAULT_HOSTS)})")
    p.add_argument("--days", type=int, default=30, help="validity in days (default: 30)")
    p.add_argument("--ca-name", default="pinfer-ca", help="common name of the CA")
    a = p.parse_args(argv)
    if a.days < 1:
        p.error("--days must be at least 1")
    made = make_certs(a.out, hosts=tuple(a.hosts or DEFAULT_HOSTS), days=a.days, ca_name=a.ca_name)
    print(f"wrote {a.out / 'ca.pem'} (CA certificate) and {a.out / 'ca.key'} (CA key, mode 0600)")
    for role, f in made.items():
        print(f"wrote {f.cert} ({role} certificate) and {f.key} ({role} key, mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
