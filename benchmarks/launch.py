"""Launch dealer, server and wire proxy as real processes on loopback (demos, benchmarks,
integration tests). Readiness is read from each process's first output line, never
guessed with sleeps; every wait has a timeout; everything is stopped on exit.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from protocols import tls

REPO = Path(__file__).resolve().parent.parent
WIREPROXY = REPO.parent / "shared" / "tools" / "wireproxy.py"
ADDRESS = re.compile(r"(127\.0\.0\.1:\d+)")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    address: str
    lines: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def output(self) -> str:
        return "\n".join(self.lines)


def start(name: str, argv: list[str], *, ready: str, timeout: float = 60.0,
          env: dict | None = None) -> Proc:
    """Start ``argv``; wait until a line containing ``ready`` and an address appears."""
    popen = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[str] = []
    found: queue.Queue = queue.Queue()

    def pump():
        for line in popen.stdout:
            lines.append(line.rstrip())
            m = ADDRESS.search(line)
            if ready in line and m:
                found.put(m.group(1))
        found.put(None)

    threading.Thread(target=pump, daemon=True, name=f"pump-{name}").start()
    try:
        address = found.get(timeout=timeout)
    except queue.Empty:
        popen.kill()
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s:\n" + "\n".join(lines))
    if address is None:
        raise RuntimeError(f"{name} exited before it was ready:\n" + "\n".join(lines))
    return Proc(name, popen, address, lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """Dealer + server (+ optional wire proxy in front of the server) on loopback.

    with Deployment("digits-cnn", ["mpc", "plaintext"], certs=dir) as d:
        d.server_address, d.dealer_address, d.client_tls()

    ``output_policy``: benchmarks and fidelity checks compare logits, so a classifier's
    server is started with ``--set output.policy=full`` (explicitly; a server's default
    reveals only the label); ``benchmarks.sessions.run_session`` asks for the same. None:
    the server's default policy.
    """

    def __init__(self, model: str, protocols: list[str], *, certs: Path | None = None,
                 insecure: bool = False, threads: int = 1, proxy: bool = False,
                 proxy_args: list[str] | None = None, extra_server_args: list[str] | None = None,
                 workdir: Path | None = None, output_policy: str | None = "full"):
        self.model = model
        from models.registry import MODELS
        classifier = model in MODELS and MODELS[model].task == "classification"
        self.output_policy = output_policy if classifier else None
        self.protocols = protocols
        self.insecure = insecure
        self.threads = threads
        self.proxy = proxy
        self.proxy_args = proxy_args or []
        self.extra = extra_server_args or []
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pinfer-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.certs = certs or self.workdir / "certs"
        self.procs: list[Proc] = []
        self.wire_report = self.workdir / "wire.json"

    def _tls_args(self) -> list[str]:
        return ["--insecure"] if self.insecure else ["--certs", str(self.certs)]

    def _output_args(self) -> list[str]:
        return [] if self.output_policy is None else ["--set",
                                                      f"output.policy={self.output_policy}"]

    def client_tls(self):
        return None if self.insecure else tls.TlsFiles.for_role(self.certs, "client")

    def __enter__(self):
        if not self.insecure and not (self.certs / "ca.pem").is_file():
            tls.make_certs(self.certs)
        py = sys.executable
        try:
            dealer = start("dealer", [py, "-m", "server.dealer", "--port", "0"] + self._tls_args(),
                           ready="listening")
            self.procs.append(dealer)
            server = start("server", [py, "-m", "server", "--model", self.model, "--protocol",
                                      ",".join(self.protocols), "--port", "0", "--dealer",
                                      dealer.address, "--threads", str(self.threads),
                                      "--store", str(self.workdir / "server-store")]
                           + self._tls_args() + self._output_args() + self.extra,
                           ready="listening")
            self.procs.append(server)
            self.dealer_address = dealer.address
            self.server_address = server.address
            if self.proxy:
                port = free_port()
                proxy = start("wireproxy", [py, str(WIREPROXY), "--listen", f"127.0.0.1:{port}",
                                            "--to", server.address, "--report",
                                            str(self.wire_report)] + self.proxy_args,
                              ready="wireproxy")
                self.procs.append(proxy)
                self.server_address = f"127.0.0.1:{port}"
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)
