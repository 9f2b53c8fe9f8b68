"""Real clients for the bad-frames benchmark (issue #9): tapped sessions, the checks made on
the server after each batch, and sessions with one byte corrupted in flight.

``corrupt_through_proxy`` runs a clean session through ``wireproxy.py`` to learn the
session's wire size, then one session per offset with ``--corrupt-at OFFSET`` (a fresh
proxy each time: its byte count spans its lifetime). Each session must end with a clear
error (``CLEAN_ERRORS``) or a correct result; a wrong result, another exception or a
session still running after ``HANG_S`` is counted against the row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import grpc
import torch

from benchmarks.launch import WIREPROXY, Deployment, free_port, start
from benchmarks.sessions import ERROR_BUDGET
from client.api import PrivateInference
from client.reference import plaintext_forward
from models.digits import as_model_input, load_split
from models.registry import get_model
from protocols.channel import PeerError
from protocols.config import Config, TransportConfig
from protocols.endpoints import dial
from protocols.session import HandshakeError
from protocols.store import MaterialError
from protocols.wire import pinfer_pb2 as pb
from protocols.wire.codec import FrameError
from server.health import check

MODEL = "digits-mlp"
CLEAN_ERRORS = (PeerError, ConnectionError, HandshakeError, FrameError, MaterialError)
HANG_S = 60.0
BASE_CONFIG = dataclasses.replace(Config(), transport=TransportConfig(recv_timeout_s=20.0))


def client_config(dep) -> Config:
    """The clients' config: a 20 s receive timeout (local, not in the digest) and the
    output policy the deployment's server was started with, if it names one."""
    policy = getattr(dep, "output_policy", None)
    return BASE_CONFIG if policy is None else BASE_CONFIG.with_overrides(
        [f"output.policy={policy}"])
LOG_PROBLEMS = re.compile(r"Traceback|Exception (calling|iterating|deserializing|serializing)"
                          r"|Fatal|Segmentation|core dumped")


def reference(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(test image ``index`` as model input, its float64 plaintext logits)."""
    spec = get_model(MODEL)
    _, X_test, _, _ = load_split()
    x = as_model_input(spec, X_test[index:index + 1])
    return x, plaintext_forward(spec, spec.load_weights(), x, repeats=1)[0]


def correct(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """Plaintext's class, and plaintext's logits within the error budget when the output
    is logits rather than a one-hot label."""
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.shape != ref.shape or not torch.equal(y.argmax(-1), ref.argmax(-1)):
        return False
    one_hot = bool(((y.abs() < 1e-3) | ((y - 1).abs() < 1e-3)).all())
    return one_hot or (y - ref).abs().max().item() < ERROR_BUDGET[MODEL]


class Tapped:
    """A connected real client whose channel records the frames it sends and receives, and
    can send one of its own frames twice (``duplicate_next``)."""

    def __init__(self, dep, store: Path, inferences: int, server: str | None = None):
        self.session = PrivateInference(
            model=MODEL, protocol="mpc", server=server or dep.proc("server").address,
            dealer=dep.dealer_address, tls=dep.client_tls(), config=client_config(dep),
            inferences=inferences, store_root=store, connect_timeout=10)
        self.sent: list[pb.Frame] = []
        self.received: list = []
        self.dup_seq = None
        self._dup = None
        self.session.connect()
        self.chan = self.session._chan
        put, get = self.chan._put, self.chan._get

        def tap_put(frame):
            self.sent.append(frame)
            put(frame)
            if self._dup is not None and frame.tag.endswith(self._dup):
                self._dup, self.dup_seq = None, frame.seq
                put(pb.Frame.FromString(frame.SerializeToString()))

        def tap_get(timeout):
            item = get(timeout)
            self.received.append(item)
            return item

        self.chan._put, self.chan._get = tap_put, tap_get

    def duplicate_next(self, tag_suffix: str) -> None:
        self._dup = tag_suffix

    def close(self) -> None:
        chan = self.session._chan
        try:
            self.session.close(failed=chan is None or chan._closed)
        except CLEAN_ERRORS:
            pass


def run_client(dep, store: Path, inferences: int = 1, server: str | None = None) -> Tapped:
    return Tapped(dep, store, inferences, server)


class Watch:
    """The server's and the dealer's logs from now on."""

    def __init__(self, dep):
        self.procs = [dep.proc("server"), dep.proc("dealer")]
        self.start = [len(p.lines) for p in self.procs]

    def new_lines(self) -> list[str]:
        return [line for p, n in zip(self.procs, self.start) for line in p.lines[n:]]


def failure_logged(dep, sid: str, timeout: float = 3.0) -> str:
    """The server's log line for session ``sid``'s failure ("" if none within ``timeout``)."""
    mark, end = f"session {sid[:8]} failed:", time.monotonic() + timeout
    while True:
        for line in list(dep.proc("server").lines):
            if mark in line:
                return line
        if time.monotonic() > end:
            return ""
        time.sleep(0.02)


def _store_dir(dep, sid: str) -> Path:
    return dep.workdir / "server-store" / f"{sid}-server"


def wait_burned(dep, sid: str, timeout: float = 5.0) -> bool:
    """True once the server's material for session ``sid`` is gone (burned)."""
    end = time.monotonic() + timeout
    while _store_dir(dep, sid).exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _leftover(dep, timeout: float = 5.0) -> int:
    root = dep.workdir / "server-store"
    end = time.monotonic() + timeout
    while True:
        n = sum(p.name.endswith("-server") for p in root.iterdir()) if root.is_dir() else 0
        if n == 0 or time.monotonic() > end:
            return n
        time.sleep(0.05)


def server_checks(dep, watch: Watch) -> dict:
    """Alive, SERVING, a valid client served correctly, no traceback logged, and no
    session material left behind."""
    server, dealer = dep.proc("server"), dep.proc("dealer")
    ch = dial(server.address, dep.client_tls(), Config().transport)
    try:
        health = check(ch)
    except grpc.RpcError as exc:
        health = f"unreachable: {exc.code().name}"
    finally:
        ch.close()
    x, ref = reference(1)
    with tempfile.TemporaryDirectory(prefix="next-") as tmp:
        try:
            with PrivateInference(model=MODEL, protocol="mpc", server=server.address,
                                  dealer=dep.dealer_address, tls=dep.client_tls(),
                                  store_root=Path(tmp), config=client_config(dep)) as s:
                s.offline()
                next_ok = correct(s.infer(x), ref)
        except CLEAN_ERRORS:
            next_ok = False
    problems = [line for line in watch.new_lines() if LOG_PROBLEMS.search(line)]
    return {"alive": server.popen.poll() is None and dealer.popen.poll() is None,
            "health": health, "next_client_correct": next_ok,
            "log_problems": len(problems), "log_examples": problems[:5],
            "sessions_failed_logged": sum("failed:" in line for line in watch.new_lines()),
            "leftover_material": _leftover(dep)}


class _GrpcLogCount(logging.Handler):
    """Counts (and keeps quiet) what gRPC logs with a traceback in this process."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += record.exc_info is not None


def _through_proxy(dep, wd: Path, offset: int | None, x, ref) -> dict:
    wd.mkdir(parents=True, exist_ok=True)
    report = wd / "wire.json"
    argv = [sys.executable, str(WIREPROXY), "--listen", f"127.0.0.1:{free_port()}", "--to",
            dep.proc("server").address, "--report", str(report)]
    proxy = start("wireproxy", argv + ([] if offset is None else ["--corrupt-at", str(offset)]),
                  ready="wireproxy", timeout=20)
    result: dict = {}

    def work():
        try:
            with PrivateInference(model=MODEL, protocol="mpc", server=proxy.address,
                                  dealer=dep.dealer_address, tls=dep.client_tls(),
                                  store_root=wd / "cstore", config=client_config(dep),
                                  connect_timeout=10) as s:
                s.offline()
                result["y"] = s.infer(x)
        except CLEAN_ERRORS as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - counted as a crash
            result["crash"] = f"{type(exc).__name__}: {exc}"

    t0 = time.monotonic()
    worker = threading.Thread(target=work, daemon=True, name=f"corrupt-{offset}")
    worker.start()
    worker.join(HANG_S)
    seconds = time.monotonic() - t0
    proxy.stop()
    wire = json.loads(report.read_text())["total"] if report.is_file() else {}
    total = wire.get("up_bytes", 0) + wire.get("down_bytes", 0)
    if worker.is_alive():
        outcome, detail = "hang", ""
    elif "y" in result:       # a result came back (a later error while closing is secondary)
        outcome = "correct" if correct(result["y"], ref) else "wrong"
        detail = result.get("error", "")
    elif "crash" in result:
        outcome, detail = "crash", result["crash"]
    else:
        outcome, detail = "error", result.get("error", "")
    if offset is not None and total <= offset and outcome == "correct":
        outcome = "not reached"
    return {"outcome": outcome, "detail": detail[:200], "wire_bytes": total,
            "seconds": round(seconds, 2)}


def corrupt_through_proxy(insecure: bool = True, offsets=None, n: int = 12, dep=None,
                          workdir=None) -> dict:
    """Real sessions, each through a proxy that flips one bit at one offset."""
    mode = "insecure" if insecure else "mTLS"
    counter = _GrpcLogCount()
    grpc_log = logging.getLogger("grpc")
    with ExitStack() as stack:
        if dep is None:
            wd = Path(workdir) / mode if workdir else None
            if wd is not None:
                wd.mkdir(parents=True, exist_ok=True)
            dep = stack.enter_context(Deployment(MODEL, ["mpc"], insecure=insecure, workdir=wd))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corrupt-")))
        watch = Watch(dep)
        x, ref = reference(0)
        grpc_log.addHandler(counter)
        propagate, grpc_log.propagate = grpc_log.propagate, False
        try:
            clean = _through_proxy(dep, tmp / "clean", None, x, ref)
            if clean["outcome"] != "correct":
                raise RuntimeError(f"the uncorrupted session through the proxy failed: {clean}")
            total = clean["wire_bytes"]
            if offsets is None:
                offsets = [30, 120, 400] + [total * (2 * k + 1) // (2 * (n - 3))
                                            for k in range(max(0, n - 3))]
            runs = {off: _through_proxy(dep, tmp / f"at-{off}", off, x, ref) for off in offsets}
        finally:
            grpc_log.removeHandler(counter)
            grpc_log.propagate = propagate
        checks = server_checks(dep, watch)
    per = Counter(r["outcome"] for r in runs.values())
    examples = {}
    for off, r in runs.items():
        examples.setdefault(r["outcome"], f"offset {off}: {r['detail']}")
    row = {"class": "bad frames (corrupted in flight)",
           "case": f"{mode}: one flipped bit, {len(offsets)} offsets in {total} wire bytes",
           "cases": len(offsets), "crashes": per["crash"], "hangs": per["hang"],
           "reused_preprocessing": 0, "wrong_results": per["wrong"],
           "clean_errors": per["error"], "correct": per["correct"],
           "not_reached": per["not reached"], "client_log_tracebacks": counter.count,
           "slowest_s": max((r["seconds"] for r in runs.values()), default=0.0),
           "examples": examples}
    return {"rows": [row], "server": checks, "runs": {str(k): v for k, v in runs.items()}}
