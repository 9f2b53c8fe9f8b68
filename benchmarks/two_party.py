"""Run one op under ``mpc`` with client, server and dealer in three processes (one torch
thread each), linked by multiprocessing queues carrying the same serialised frames as
gRPC. For operator benchmarks (ReLU, softmax) that are not served models: same meter,
same material, same protocol code; only the transport differs (no TLS/HTTP/2).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import tempfile
import time
from pathlib import Path

import torch

OPS = {}     # name -> forward(ops, x); filled by register()


def register(name: str):
    def deco(fn):
        OPS[name] = fn
        return fn
    return deco


def _spec(name: str, shape):
    from models.spec import ModelSpec
    return ModelSpec(name, tuple(shape[1:]), {}, OPS[name], Path("/nonexistent"))


def _party(index, name, shape, x, overrides, peer_q, dealer_q, store, result_q, module):
    try:
        __import__(module)                       # registers the ops in the child
        torch.set_num_threads(1)
        from mpc.protocol import PARTY_NAMES
        from protocols.channel import QueueChannel
        from protocols.config import Config
        from protocols.families.base import RoleContext
        from protocols.metering import Meter
        from protocols.registry import get_family

        cfg = Config().with_overrides(overrides)
        meter = Meter(PARTY_NAMES[index])
        out_q, in_q = peer_q[index], peer_q[1 - index]
        chan = QueueChannel(meter, out_q, in_q, link="peer", session_id="bench")
        d_out, d_in = dealer_q[index]
        ctx = RoleContext(spec=_spec(name, shape), config=cfg, channel=chan, meter=meter,
                          session_id="bench", input_shape=tuple(shape), inferences=1,
                          store_root=Path(store),
                          dealer_connect=lambda: QueueChannel(meter, d_out, d_in, link="dealer",
                                                              session_id="bench"))
        fam = get_family("mpc")
        role = fam.client(ctx) if index == 0 else fam.server(ctx, {})
        t0 = time.perf_counter()
        role.offline()
        t1 = time.perf_counter()
        y = role.online(torch.from_numpy(x)) if index == 0 else role.online()
        t2 = time.perf_counter()
        peak = role.peak_storage_bytes()
        role.close()
        result_q.put((index, {"offline_s": t1 - t0, "online_s": t2 - t1,
                              "summary": meter.summary(),
                              "dealer": meter.total("offline", "dealer").as_dict(),
                              "op": meter.total("online", "op").as_dict(),
                              "storage": peak, "y": None if y is None else y.numpy()}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result_q.put((index, {"error": f"{type(exc).__name__}: {exc}"}))


def _dealer(dealer_q, result_q):
    try:
        from mpc.dealer import DealerSessions, serve_party
        from protocols.channel import QueueChannel
        from protocols.metering import Meter

        sessions = DealerSessions()
        meter = Meter("dealer")
        for index in (0, 1):
            d_out, d_in = dealer_q[index]
            serve_party(QueueChannel(meter, d_in, d_out, link=f"dealer-{index}",
                                     session_id="bench"), sessions, None)
        result_q.put(("dealer", {"sent": meter.total("offline").payload_sent}))
    except BaseException as exc:  # noqa: BLE001
        result_q.put(("dealer", {"error": f"{type(exc).__name__}: {exc}"}))


def run(name: str, x: torch.Tensor, overrides: list[str], module: str, timeout: float = 600):
    """Returns {0: client result, 1: server result, "dealer": ...}."""
    ctx = mp.get_context("spawn")
    peer_q = [ctx.Queue(), ctx.Queue()]
    dealer_q = [(ctx.Queue(), ctx.Queue()), (ctx.Queue(), ctx.Queue())]
    result_q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="pinfer-2p-") as store:
        procs = [ctx.Process(target=_dealer, args=(dealer_q, result_q), daemon=True)]
        for i in (0, 1):
            mine = x.numpy() if i == 0 else None  # only the client holds the input
            procs.append(ctx.Process(target=_party, args=(i, name, tuple(x.shape), mine, overrides,
                                                          peer_q, dealer_q, store, result_q,
                                                          module), daemon=True))
        for p in procs:
            p.start()
        results = {}
        deadline = time.monotonic() + timeout
        try:
            while len(results) < 3:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name}: parties did not finish within {timeout} s")
                try:
                    key, val = result_q.get(timeout=min(left, 5))
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError(f"{name}: a party process died") from None
                    continue
                if "error" in val:
                    raise RuntimeError(f"{name}: party {key} failed: {val['error']}")
                if val.get("y") is not None:
                    val["y"] = torch.from_numpy(val["y"])
                results[key] = val
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
    return results
