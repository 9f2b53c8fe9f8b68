"""Processes for fault experiments (``benchmarks.reliability_faults``): a dealer and a
server on fixed loopback ports with mTLS, restartable in place (so a failpoint can be set in
one's environment), client CLI processes, in-process client sessions, and the stores.
Every output line of a process is kept with its arrival time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.launch import REPO, free_port
from protocols import tls

PROTOCOL = "mpc"
WAIT_S = 20.0                 # longest wait for anything before a case counts as hung


class Proc:
    """A process whose output lines are kept with their arrival time."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name = name
        self.popen = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self._new = threading.Condition()
        self._eof = False
        threading.Thread(target=self._pump, daemon=True, name=f"pump-{name}").start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            with self._new:
                self.lines.append((time.time(), line.rstrip()))
                self._new.notify_all()
        with self._new:
            self._eof = True
            self._new.notify_all()

    def wait_line(self, text: str, timeout: float, since: float = 0.0):
        """(time, line) of the first line containing ``text`` that arrived after ``since``."""
        end = time.monotonic() + timeout
        with self._new:
            while True:
                for t, line in self.lines:
                    if t >= since and text in line:
                        return t, line
                left = end - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._new.wait(min(left, 0.2))

    def output(self, since: float = 0.0) -> str:
        return "\n".join(line for t, line in self.lines if t >= since)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to local ``port``."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
                  for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "01" and int(f[2].split(":")[1], 16) == port and f[9] in inodes:
                return True
    return False


@dataclass
class Run:
    """An in-process client session: prediction or exception, start and end times, and
    its session id (None if it failed before the handshake)."""

    t0: float
    t1: float = 0.0
    pred: int | None = None
    exc: Exception | None = None
    sid: str | None = None


class Lab:
    """A dealer and a server on fixed loopback ports (so either can be restarted in place),
    their stores, certificates, and in-process client sessions."""

    def __init__(self, model: str, workdir: Path | None = None):
        self.model = model
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pinfer-faults-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.certs = self.workdir / "certs"
        if not (self.certs / "ca.pem").is_file():
            tls.make_certs(self.certs)
        self.server_store = self.workdir / "server-store"
        self.client_store = self.workdir / "client-store"
        self.dealer_port, self.server_port = free_port(), free_port()
        self.dealer_address = f"127.0.0.1:{self.dealer_port}"
        self.server_address = f"127.0.0.1:{self.server_port}"
        self.dealer: Proc | None = None
        self.server: Proc | None = None
        self._inputs = None

    # -- processes ----------------------------------------------------------------------------
    def _tls(self) -> list[str]:
        return ["--certs", str(self.certs)]

    def _start(self, name: str, argv: list[str], env) -> Proc:
        proc = Proc(name, argv, env)
        if proc.wait_line("listening", 90) is None:
            proc.stop()
            raise RuntimeError(f"{name} did not start:\n{proc.output()}")
        return proc

    def start_dealer(self, env: dict | None = None) -> Proc:
        if self.dealer is not None:
            self.dealer.stop()
        self.dealer = self._start("dealer", [sys.executable, "-m", "server.dealer", "--port",
                                             str(self.dealer_port)] + self._tls(), env)
        return self.dealer

    def start_server(self, env: dict | None = None, extra: list[str] = ()) -> Proc:
        if self.server is not None:
            self.server.stop()
        self.server = self._start("server", [
            sys.executable, "-m", "server", "--model", self.model, "--protocol", PROTOCOL,
            "--port", str(self.server_port), "--dealer", self.dealer_address, "--threads", "1",
            "--store", str(self.server_store)] + self._tls() + list(extra), env)
        return self.server

    def ensure(self) -> None:
        if self.dealer is None or not self.dealer.alive():
            self.start_dealer()
        if self.server is None or not self.server.alive():
            self.start_server()

    def client_cli(self, env: dict | None = None, index: int = 0) -> Proc:
        return Proc("client", [sys.executable, "-m", "client", "--model", self.model,
                               "--protocol", PROTOCOL, "--server", self.server_address,
                               "--dealer", self.dealer_address, "--index", str(index),
                               "--store", str(self.client_store), "--no-reference"]
                    + self._tls(), env)

    def stop(self) -> None:
        for p in (self.server, self.dealer):
            if p is not None:
                p.stop()

    def __enter__(self):
        self.ensure()
        return self

    def __exit__(self, *exc):
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- in-process client sessions -------------------------------------------------------------
    def inputs(self):
        """Test images and the plaintext model's predictions for them."""
        if self._inputs is None:
            from client.reference import plaintext_forward
            from models.digits import as_model_input, load_split
            from models.registry import get_model
            spec = get_model(self.model)
            _, X, _, _ = load_split()
            xs = [as_model_input(spec, X[i:i + 1]) for i in range(8)]
            w = spec.load_weights()
            self._inputs = [(x, int(plaintext_forward(spec, w, x, repeats=1)[0].argmax()))
                            for x in xs]
        return self._inputs

    def session(self, index: int = 0, timeout: float = WAIT_S) -> Run:
        """One in-process client session on a thread (a TimeoutError if it did not end)."""
        from client.api import PrivateInference
        x, _ = self.inputs()[index]
        run = Run(t0=time.time())
        s = PrivateInference(model=self.model, protocol=PROTOCOL, server=self.server_address,
                             dealer=self.dealer_address, store_root=self.client_store,
                             tls=tls.TlsFiles.for_role(self.certs, "client"))

        def go():
            try:
                with s:
                    s.offline()
                    y = s.infer(x)
                run.pred = int(y.reshape(-1, y.shape[-1])[0].argmax())
            except Exception as exc:  # noqa: BLE001 - classified by the caller
                run.exc = exc
            run.t1 = time.time()

        thread = threading.Thread(target=go, daemon=True, name="fault-client")
        thread.start()
        thread.join(timeout)
        run.sid = s.session_id
        if thread.is_alive():
            run.exc, run.t1 = TimeoutError(f"client session did not end within {timeout:g} s"), \
                time.time()
        return run

    def follow_up(self, index: int = 1) -> str:
        run = self.session(index, timeout=60)
        want = self.inputs()[index][1]
        if isinstance(run.exc, TimeoutError):
            return f"hang: {run.exc}"
        if run.exc is not None:
            return f"failed: {type(run.exc).__name__}: {run.exc}"
        return "ok" if run.pred == want else f"wrong: predicted {run.pred}, plaintext {want}"

    def leftovers(self, grace: float = 3.0) -> list[str]:
        """Store directories left after up to ``grace`` seconds (a finished session's
        server burns its store just after the client has closed)."""
        end = time.monotonic() + grace
        while self.store_dirs() and time.monotonic() < end:
            time.sleep(0.05)
        return self.store_dirs()

    def store_dirs(self) -> list[str]:
        return sorted(f"{root.name}/{p.name}" for root in (self.server_store, self.client_store)
                      if root.is_dir() for p in root.iterdir())

    def clear_stores(self) -> None:
        for root in (self.server_store, self.client_store):
            if root.is_dir():
                for p in root.iterdir():
                    shutil.rmtree(p, ignore_errors=True)
