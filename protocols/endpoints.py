"""Process plumbing shared by dealer, server and client: TLS flags, dialing, serving.

mTLS is on by default: every process needs ``--certs DIR`` (from ``python -m
protocols.tls --out DIR``) or explicit ``--ca/--cert/--key``; ``--insecure`` turns TLS off
for loopback experiments and must be asked for explicitly.
"""

from __future__ import annotations

import argparse
from concurrent import futures
from pathlib import Path

import grpc

from protocols import tls
from protocols.config import TransportConfig
from protocols.grpc_link import channel_options, server_options

DEFAULT_CERTS = Path(".pinfer/certs")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--threads, --config, --set: the same on client and server (the digest of the agreed
    part of the config must match in the handshake)."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config field, e.g. --set fixed.frac_bits=18 or "
                             "--set compare.method=bitdecomp")


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("transport security (mutual TLS by default)")
    g.add_argument("--certs", type=Path, default=None,
                   help=f"directory from `python -m protocols.tls --out DIR` (ca.pem, <role>.pem, "
                        f"<role>.key); default {DEFAULT_CERTS} if it exists")
    g.add_argument("--ca", type=Path, help="CA certificate to pin (overrides --certs)")
    g.add_argument("--cert", type=Path, help="this process's certificate (overrides --certs)")
    g.add_argument("--key", type=Path, help="this process's private key (overrides --certs)")
    g.add_argument("--insecure", action="store_true",
                   help="no TLS at all (loopback experiments only; peers must agree)")


def tls_from_args(args, role: str) -> tls.TlsFiles | None:
    if args.insecure:
        return None
    if args.ca and args.cert and args.key:
        return tls.TlsFiles(args.ca, args.cert, args.key)
    certs = args.certs or DEFAULT_CERTS
    files = tls.TlsFiles.for_role(certs, role)
    missing = [str(p) for p in (files.ca, files.cert, files.key) if not p.is_file()]
    if missing:
        raise SystemExit(f"error: mTLS is on by default but {', '.join(missing)} missing; make "
                         f"certificates with `python -m protocols.tls --out {certs}` or pass "
                         "--insecure for a loopback experiment")
    return files


def dial(target: str, files: tls.TlsFiles | None, transport: TransportConfig) -> grpc.Channel:
    opts = channel_options(transport)
    if files is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, tls.channel_credentials(files), options=opts)


def make_server(files: tls.TlsFiles | None, transport: TransportConfig, port: int,
                host: str = "127.0.0.1", workers: int = 32) -> tuple[grpc.Server, int]:
    """A gRPC server bound to host:port (0 picks a free port); returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=server_options(transport))
    address = f"{host}:{port}"
    if files is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, tls.server_credentials(files))
    if bound == 0:
        raise SystemExit(f"error: cannot listen on {address}")
    return server, bound


def wait_ready(channel: grpc.Channel, target: str, timeout: float) -> None:
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConnectionError(f"cannot reach {target} within {timeout:.0f} s "
                              "(not running, wrong address, or TLS refused)") from None
