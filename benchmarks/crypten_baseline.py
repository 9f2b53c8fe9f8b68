"""CrypTen 0.4.1 as the peer baseline: ReLU and softmax, 2 parties, TFP and TTP providers.

Each (op, provider) runs in its own session: 2 party processes (spawned, 1 torch thread
each, gloo over ``tcp://127.0.0.1:PORT``), plus CrypTen's ``TTPServer`` as a third process
for TTP. Party 0 supplies the input (``crypten.cryptensor(x, src=0)``). Per repeat:
encrypt, barrier, reset CrypTen's communication stats, time the op alone, read the stats,
then reveal. One untimed warm-up run precedes the timed repeats. Decryption divides the
revealed ring values by the scale in float64 (sidesteps the FixedPointEncoder.decode bug).

Counting: CrypTen's own tally (``cfg.communicator.verbose``), in which a call is a "round"
and bytes are elements x 8, each party counting what it sends *and* receives (an all_reduce
of n elements counts 2n x 8: n sent, n received). A small meter wrapped around the
communicator splits that tally into sent/received and into party-to-party vs dealer
traffic (TTP: party 0's ``ttp_request`` calls). CrypTen has no offline phase: TFP party 0
makes every triple in the clear during the op; TTP's dealer answers one request per
triple during the op, so its traffic and latency are inside the online figures.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import time
import traceback

import torch

from benchmarks.launch import free_port
from benchmarks.records import append_records, base_record, markdown_table

OPS = {"relu": ((100_000,), 4.0), "softmax": ((128, 128), 2.0)}
PROVIDERS = ("tfp", "ttp")
SEED, WARMUP = 0, 1
COUNTING = ("crypten-tally: rounds = communicator calls, bytes = elements x 8, each party "
            "counting what it sends and what it receives; sent/received split by call type")
_METHODS = ("send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce", "gather",
            "all_gather", "broadcast", "barrier", "send_obj", "recv_obj", "broadcast_obj")


def make_input(op: str, shape=None):
    shape = tuple(shape or OPS[op][0])
    gen = torch.Generator().manual_seed(SEED)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * OPS[op][1]


def reference(op: str, x):
    return torch.relu(x) if op == "relu" else torch.softmax(x, dim=-1)


class _Meter:
    """Wraps a communicator instance's methods; splits traffic by direction and by phase."""

    def __init__(self, comm):
        self.comm, self.rank, self.phase = comm, comm.get_rank(), "peer"
        self.reset()
        for name in _METHODS:
            setattr(comm, name, self._wrap(name, getattr(comm, name)))

    def reset(self):
        self.requests = 0  # TTP requests made by this party (party 0 only)
        self.c = {p: {"sent": 0, "received": 0, "calls": 0} for p in ("peer", "dealer")}

    def _wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self._count(name, args, out)
            return out
        return wrapped

    def _count(self, name, args, out):
        """CrypTen's own rules (communicator._logging), each amount put on its side."""
        ws, c, b = self.comm.get_world_size(), self.c[self.phase], self.comm.BYTES_PER_ELEMENT
        n = lambda t: sum(x.nelement() for x in t) if isinstance(t, list) else t.nelement()
        c["calls"] += 1
        if name in ("send", "isend", "recv", "irecv"):
            c["sent" if name.endswith("send") else "received"] += n(args[0]) * b
        elif name in ("all_reduce", "all_gather"):
            c["sent"] += (ws - 1) * n(args[0]) * b
            c["received"] += (ws - 1) * n(args[0]) * b
        elif name == "broadcast":  # the source sends to the others
            src = args[1] == self.rank
            c["sent" if src else "received"] += (ws - 1 if src else 1) * n(args[0]) * b
        elif name == "scatter":
            if args[1] == self.rank:
                c["sent"] += sum(x.nelement() for i, x in enumerate(args[0]) if i != self.rank) * b
            else:
                c["received"] += n(out) * b
        elif name in ("gather", "reduce"):  # the destination receives from the others
            dst = args[1] == self.rank
            c["received" if dst else "sent"] += (ws - 1 if dst else 1) * n(args[0]) * b
        elif name in ("send_obj", "broadcast_obj"):
            c["sent"] += sys.getsizeof(args[0]) * (ws - 1 if name == "broadcast_obj" else 1)
        elif name == "recv_obj":
            c["received"] += sys.getsizeof(out)


def _worker(rank, port, provider, op, shape, repeats, results):
    """One process: party ``rank`` (0 or 1) or, with rank 2, CrypTen's TTP server."""
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", DISTRIBUTED_BACKEND="gloo",
                          RENDEZVOUS=f"tcp://127.0.0.1:{port}")
        torch.set_num_threads(1)
        from protocols.families.crypten_compat import import_crypten

        crypten = import_crypten()
        crypten.cfg.mpc.provider = provider.upper()
        crypten.cfg.communicator.verbose = True
        if rank == 2:  # serves requests until party 0's crypten.uninit() says "terminate"
            crypten.mpc.provider.TTPServer()
            tally = crypten.communicator.get().get_communication_stats()
            results.put(("ok", rank, {"tally": tally}))
            return
        crypten.init()
        comm = crypten.communicator.get()
        meter = _Meter(comm)
        if provider == "ttp" and rank == 0:  # party 0's dealer traffic, counted apart
            client = crypten.mpc.provider.ttp_provider.TTPClient.get()
            original = client.ttp_request

            def ttp_request(*args, **kwargs):
                meter.phase, meter.requests = "dealer", meter.requests + 1
                try:
                    return original(*args, **kwargs)
                finally:
                    meter.phase = "peer"
            client.ttp_request = ttp_request
        x = make_input(op, shape)
        ref = reference(op, x)
        runs = []
        for i in range(WARMUP + repeats):
            xe = crypten.cryptensor(x, src=0)
            comm.barrier()
            comm.reset_communication_stats()
            meter.reset()
            t0 = time.perf_counter()
            y = xe.relu() if op == "relu" else xe.softmax(-1)
            seconds = time.perf_counter() - t0
            tally = dict(comm.get_communication_stats())
            counts = {p: dict(v) for p, v in meter.c.items()}
            err = (y.reveal().double() / y.encoder.scale - ref).abs().max().item()
            if i >= WARMUP:
                runs.append({"seconds": seconds, "tally": tally, "meter": counts,
                             "ttp_requests": meter.requests, "max_abs_error": err})
        crypten.uninit()
        results.put(("ok", rank, {"runs": runs}))
    except Exception:  # report, then exit non-zero; the parent stops every process
        results.put(("error", rank, traceback.format_exc()))
        sys.exit(1)


def run_session(provider: str, op: str, shape=None, repeats: int = 3,
                timeout: float = 300.0) -> dict[int, dict]:
    """Spawn the parties (and TTP server); return each rank's payload. Kills all on error."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port, n = free_port(), 3 if provider == "ttp" else 2
    procs = [ctx.Process(target=_worker, args=(r, port, provider, op, shape, repeats, results),
                         name=f"crypten-{provider}-{r}", daemon=True) for r in range(n)]
    out: dict[int, dict] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CrypTen {provider}/{op} did not finish in {timeout:.0f} s")
            try:
                status, rank, payload = results.get(timeout=min(left, 2.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}")
                continue
            if status != "ok":
                raise RuntimeError(f"CrypTen rank {rank} failed:\n{payload}")
            out[rank] = payload
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
        return out
    finally:
        for p in procs:  # whatever still runs: SIGTERM, then SIGKILL
            for stop in (p.terminate, p.kill):
                if p.is_alive():
                    stop()
                    p.join(5)
        results.close()


def _party_view(runs: list[dict]) -> dict:
    last = runs[-1]
    peer, dealer = last["meter"]["peer"], last["meter"]["dealer"]
    secs = [r["seconds"] for r in runs]
    return {"online": {"seconds": statistics.median(secs),
                       "bytes_sent": peer["sent"] + dealer["sent"],
                       "bytes_received": peer["received"] + dealer["received"],
                       "rounds": last["tally"]["rounds"]},
            "peer": peer, "dealer_traffic": dealer, "ttp_requests": last["ttp_requests"],
            "crypten_tally": {"bytes": last["tally"]["bytes"], "rounds": last["tally"]["rounds"]},
            "seconds_all": secs,
            "counts_constant": all((r["tally"]["bytes"], r["tally"]["rounds"]) ==
                                   (last["tally"]["bytes"], last["tally"]["rounds"]) for r in runs)}


def make_record(op: str, provider: str, payloads: dict[int, dict], shape, repeats: int) -> dict:
    p0, p1 = _party_view(payloads[0]["runs"]), _party_view(payloads[1]["runs"])
    dealer: dict = {"role": "party 0 (in-process, triples made in the clear)" if provider == "tfp"
                    else "CrypTen TTPServer (separate process)"}
    dealer_sent = 0
    if provider == "ttp":
        dealer_sent = p0["dealer_traffic"]["received"]  # what party 0 received from it
        executions = WARMUP + repeats
        server = payloads[2]["tally"]
        dealer.update({"online": {"bytes_sent": dealer_sent,
                                  "bytes_received": p0["dealer_traffic"]["sent"],
                                  "requests": p0["ttp_requests"]},
                       "server_tally_bytes_per_op": server["bytes"] / executions,
                       "server_tally_note": "TTP server's own tally over the session / "
                                            f"{executions} executions; requests received included"})
    errors = [r["max_abs_error"] for k in (0, 1) for r in payloads[k]["runs"]]
    return base_record(
        "nonlinear", op=op, protocol="crypten", method=provider,
        params={"shape": list(shape), "repeats": repeats, "threads": 1, "warmup": WARMUP,
                "seed": SEED, "input_scale": OPS[op][1], "input_party": 0},
        offline={"seconds": 0.0, "bytes_sent": 0, "bytes_received": 0, "rounds": 0,
                 "note": "CrypTen has no offline phase; correlated randomness is made "
                         "during the op and is inside the online figures"},
        online=dict(p0["online"]), counting=COUNTING,
        parties={"client": p0, "server": p1, "dealer": dealer},
        total_bytes=(p0["peer"]["sent"] + p1["peer"]["sent"] + p0["dealer_traffic"]["sent"]
                     + dealer_sent),
        fidelity={"max_abs_error": max(errors)},
        dealer="tfp-party0" if provider == "tfp" else "separate-process",
        threads=1, net="loopback", crypten_version="0.4.1")


def run(repeats: int = 3, ops=tuple(OPS), providers=PROVIDERS, shapes: dict | None = None,
        timeout: float = 300.0) -> list[dict]:
    """One record per (op, provider); ``shapes`` overrides an op's default shape."""
    records = []
    for op in ops:
        shape = tuple((shapes or {}).get(op, OPS[op][0]))
        for provider in providers:
            payloads = run_session(provider, op, shape, repeats, timeout)
            records.append(make_record(op, provider, payloads, shape, repeats))
    return records


def table(records: list[dict]) -> str:
    """Markdown table; bytes in decimal MB (1e6 B), as in REFERENCES.md."""
    _mb = lambda n: "" if n is None else f"{n / 1e6:.2f}"  # noqa: E731
    rows = [{"op": r["op"], "provider": r["method"], "shape": r["params"]["shape"],
             "s": r["online"]["seconds"], "rounds": r["online"]["rounds"],
             "peer": r["parties"]["client"]["peer"]["calls"],
             "tally": _mb(r["parties"]["client"]["crypten_tally"]["bytes"]),
             "sent": _mb(r["online"]["bytes_sent"]), "recv": _mb(r["online"]["bytes_received"]),
             "dealer": _mb(r["parties"]["dealer"].get("online", {}).get("bytes_sent")),
             "total": _mb(r["total_bytes"]), "err": r["fidelity"]["max_abs_error"]}
            for r in records]
    return markdown_table(rows, [
        ("op", "op"), ("provider", "provider"), ("shape", "shape"), ("online s (median)", "s"),
        ("rounds (party 0 tally)", "rounds"), ("peer rounds", "peer"),
        ("party 0 tally MB", "tally"), ("party 0 sent MB", "sent"),
        ("party 0 received MB", "recv"), ("dealer sent MB", "dealer"),
        ("total sent MB (all parties)", "total"), ("max abs error", "err")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated: relu,softmax")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated: tfp,ttp")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per session")
    ap.add_argument("--out", help="append records to this JSON Lines file")
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    providers = [p.lower() for p in args.providers.split(",") if p]
    bad = [o for o in ops if o not in OPS] + [p for p in providers if p not in PROVIDERS]
    if bad or args.repeats < 1:
        ap.error(f"unknown op/provider {bad}" if bad else "--repeats must be >= 1")
    records = run(args.repeats, ops, providers, timeout=args.timeout)
    if args.out:
        append_records(args.out, records)
    print(table(records))
    print(f"\nCounting: {COUNTING}. Machine: "
          f"{records[0]['machine']['cpu']}, {records[0]['machine']['cores']} cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
