"""Load: concurrent clients against one server on loopback, every result checked.

``run(clients=8, sessions=100)`` starts one dealer and one server (mTLS) and ``clients``
threads that between them run ``sessions`` single-inference sessions (each its own
handshake, preprocessing and input: test image i of the digits set for session i), all
at once. A session counts as correct when its output matches plaintext within the
model's error budget; an output computed with another session's preprocessing would be
garbage, so correct results for distinct inputs show that no material was mixed. After
the run the server's and the clients' stores must be empty (every session's material
consumed or burned). Peak RSS: the server's own, as reported in its last session
summaries, and this process's (all the clients).
"""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

from benchmarks.launch import Deployment
from benchmarks.sessions import ERROR_BUDGET, run_session
from client.reference import plaintext_forward
from models.digits import as_model_input, load_split
from models.registry import get_model


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def run(clients: int = 8, sessions: int = 100, model: str = "digits-mlp",
        protocol: str = "mpc", work: Path | None = None, progress=print) -> dict:
    import tempfile
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="pinfer-load-")
        work = Path(tmp.name)
    spec = get_model(model)
    weights = spec.load_weights()
    _, x_test, _, _ = load_split()
    xs = [as_model_input(spec, x_test[i % len(x_test):i % len(x_test) + 1])
          for i in range(sessions)]
    refs = [plaintext_forward(spec, weights, x, repeats=1)[0] for x in xs]
    budget = ERROR_BUDGET.get(model, 0.01)
    results: dict[int, str] = {}
    server_rss: list[int] = []
    lock = threading.Lock()
    todo = iter(range(sessions))

    def worker(c: int):
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                outs, rec = run_session(dep, model, protocol, [xs[i]], work / f"client{c}")
                err = (outs[0] - refs[i]).abs().max().item()
                verdict = "ok" if err <= budget else f"wrong (error {err:.3g})"
                rss = rec["parties"].get("server", {}).get("peak_rss_bytes", 0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                verdict, rss = f"failed: {type(exc).__name__}: {exc}", 0
            with lock:
                results[i] = verdict
                server_rss.append(rss)
                if len(results) % 10 == 0:
                    progress(f"  load: {len(results)}/{sessions} sessions")

    t0 = time.perf_counter()
    with Deployment(model, [protocol], certs=work / "certs", workdir=work) as dep:
        threads = [threading.Thread(target=worker, args=(c,), daemon=True)
                   for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        hung = sum(t.is_alive() for t in threads)
        alive = dep.procs[-1].popen.poll() is None if dep.procs else False
        server_store = _files(work / "server-store") + _files(dep.workdir / "store")
    seconds = time.perf_counter() - t0
    leftover = [p for c in range(clients) for p in _files(work / f"client{c}" / "client-store")]
    out = {"clients": clients, "sessions": sessions, "model": model, "protocol": protocol,
           "correct": sum(v == "ok" for v in results.values()),
           "wrong": sum(v.startswith("wrong") for v in results.values()),
           "failed": sum(v.startswith("failed") for v in results.values()),
           "missing": sessions - len(results), "hung_clients": hung, "server_alive": alive,
           "leftover_files": len(leftover) + len(server_store),
           "server_peak_rss_bytes": max(server_rss, default=0),
           "clients_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "seconds": seconds,
           "failures": sorted({v for v in results.values() if v != "ok"})[:5]}
    if tmp is not None:
        tmp.cleanup()
    return out


def rows(result: dict) -> list[dict]:
    """The reliability table's row for a load run."""
    bad = result["wrong"] + result["failed"] + result["missing"]
    return [{"class": "load", "case": f"{result['clients']} concurrent clients, "
             f"{result['model']} under {result['protocol']}, server peak RSS "
             f"{result['server_peak_rss_bytes'] / 2**20:.0f} MiB",
             "cases": result["sessions"], "crashes": 0 if result["server_alive"] else 1,
             "hangs": result["hung_clients"], "reused_preprocessing": result["leftover_files"],
             "wrong_results": bad}]
