"""Foundation benchmark: digits models under ``plaintext`` and ``mpc`` between real
processes (dealer, server, client) with mTLS on loopback, plus the ring-matmul ratios.

    python -m benchmarks foundation [--repeats 5] [--pool 360] [--out benchmarks/results]

Records (``foundation.jsonl``):
  * per model and protocol, single-inference sessions (median of ``--repeats``): offline
    and online seconds, bytes, rounds, totals, client storage (inferences_per_session 1);
  * per model under mpc, one session with a pool of all 360 test images (offline made
    ahead for all, cost per inference), with agreement and accuracy against plaintext;
  * per model under mpc, one session through the wire proxy: bytes on the wire (TLS and
    HTTP/2 included) beside the meter's payload and frame bytes;
  * ring matmul int64 vs float64 (``benchmarks.ring_speed``).
Writes ``foundation.md`` from the records.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks import ring_speed
from benchmarks.launch import Deployment
from benchmarks.records import append_records, human_bytes, markdown_table
from benchmarks.sessions import finish_record, median_of_sessions, read_wire, run_session
from models.digits import as_model_input, load_split
from models.registry import get_model

MODELS = ("digits-mlp", "digits-cnn")
RESULTS = Path(__file__).resolve().parent / "results"


def progress(msg: str) -> None:
    print(f"[foundation] {msg}", flush=True)


def bench_model(model: str, repeats: int, pool: int, work: Path, certs: Path) -> list[dict]:
    spec = get_model(model)
    weights = spec.load_weights()
    _, X_test, _, y_test = load_split()
    xs = [as_model_input(spec, X_test[i:i + 1]) for i in range(len(X_test))]
    out = []
    with Deployment(model, ["mpc", "plaintext"], certs=certs) as dep:
        for protocol in ("plaintext", "mpc"):
            progress(f"{model} {protocol}: {repeats} single-inference sessions")
            rec = median_of_sessions(dep, model, protocol, xs, work, repeats)
            ys = [run_session(dep, model, protocol, [xs[0]], work)[0][0]]
            out.append(finish_record(rec, model=model, protocol=protocol, spec=spec,
                                     weights=weights, inputs=xs[:1], outputs=ys,
                                     net="loopback", threads=1))
        progress(f"{model} mpc: one session, pool of {pool} inferences (test images)")
        ys, rec = run_session(dep, model, "mpc", xs[:pool], work)
        rec["params"]["pool"] = pool
        r = finish_record(rec, model=model, protocol="mpc", spec=spec, weights=weights,
                          inputs=xs[:pool], outputs=ys, net="loopback", threads=1,
                          labels=y_test[:pool])
        r["method"] = "pool"
        out.append(r)
        f = r["fidelity"]
        progress(f"  agreement on clear margins: {f['top1_agree']}, near-ties {f['near_ties']}, "
                 f"accuracy {f['accuracy']:.4f} (plaintext {f['plaintext_accuracy']:.4f}), "
                 f"max |err| {f['max_abs_error']:.2e}")
    with Deployment(model, ["mpc"], certs=certs, proxy=True) as dep:
        progress(f"{model} mpc: one session through the wire proxy")
        ys, rec = run_session(dep, model, "mpc", xs[:1], work)
        wire = read_wire(dep.wire_report)
        r = finish_record(rec, model=model, protocol="mpc", spec=spec, weights=weights,
                          inputs=xs[:1], outputs=ys, net="proxy-loopback", threads=1)
        if wire:
            r["wire_bytes"] = wire["total"]["up_bytes"] + wire["total"]["down_bytes"]
            r["wire"] = wire["total"]
        r["method"] = "wire"
        out.append(r)
    return out


def write_markdown(records: list[dict], path: Path) -> None:
    sessions = [r for r in records if r.get("model")]
    cols = [("model", "model"), ("protocol", "protocol"), ("run", "method"),
            ("inferences/session", "inferences_per_session"),
            ("offline s", "offline.seconds"), ("offline s/inf", "offline_per_inference.seconds"),
            ("online s", "online.seconds"),
            ("online sent", "online.bytes_sent"), ("online recv", "online.bytes_received"),
            ("online rounds", "online.rounds"), ("offline recv", "offline.bytes_received"),
            ("total bytes/inf", "total_bytes"), ("client storage", "client_storage_bytes"),
            ("plaintext s", "plaintext_seconds"), ("max err", "fidelity.max_abs_error"),
            ("top-1 agree", "fidelity.top1_agree"), ("near-ties", "fidelity.near_ties"),
            ("accuracy", "fidelity.accuracy")]
    lines = ["# Foundation benchmark", "",
             f"Machine: {records[0]['machine'].get('cpu', '?')}, "
             f"{records[0]['machine'].get('cores', '?')} cores; git {records[0]['git']}. "
             "Dealer, server and client are separate processes with mTLS on loopback; one "
             "torch thread each. Bytes are payload bytes from the meter (client's view for "
             "sent/recv); totals count every party's sends, dealer included, per inference.",
             "", "Command: `python -m benchmarks foundation`", "",
             markdown_table(sessions, cols), ""]
    wire = [r for r in sessions if r.get("wire_bytes")]
    if wire:
        lines += ["## Meter against the wire (client-server link, one mpc inference)", "",
                  "| model | meter payload (both directions) | meter frames | wire (TLS+HTTP/2) |",
                  "|---|---|---|---|"]
        for r in wire:
            c = r["parties"]["client"]
            d, ctl = r["links"]["dealer"], r["links"]["control"]
            pay = sum(c[p]["bytes_sent"] + c[p]["bytes_received"] for p in ("offline", "online")) \
                - d["bytes_sent"] - d["bytes_received"] + ctl["bytes_sent"] + ctl["bytes_received"]
            frames = sum(c[p]["frame_bytes_sent"] + c[p]["frame_bytes_received"]
                         for p in ("offline", "online")) - d["frame_bytes_sent"] \
                - d["frame_bytes_received"] + ctl["frame_bytes_sent"] + ctl["frame_bytes_received"]
            lines.append(f"| {r['model']} | {human_bytes(pay)} | {human_bytes(frames)} | "
                         f"{human_bytes(r['wire_bytes'])} |")
        lines += ["", "Meter columns: the client-server link only (protocol and control "
                  "frames, dealer link excluded); the proxy adds TLS and HTTP/2 overhead.", ""]
    ring = [r for r in records if r.get("op")]
    if ring:
        lines += ["## Ring matmul: int64 against float64 (one thread)", "",
                  ring_speed.ratio_table(ring), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks foundation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="single-inference sessions per cell")
    p.add_argument("--pool", type=int, default=360, help="test images in the pooled session")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    records = []
    with tempfile.TemporaryDirectory(prefix="pinfer-bench-") as tmp:
        work = Path(tmp)
        certs = work / "certs"
        for model in args.models.split(","):
            records += bench_model(model, args.repeats, args.pool, work, certs)
    progress("ring matmul speed (int64 vs float64, one thread)")
    records += ring_speed.run()
    jsonl = args.out / "foundation.jsonl"
    append_records(jsonl, records)
    write_markdown(records, args.out / "foundation.md")
    progress(f"wrote {len(records)} records to {jsonl} and {args.out / 'foundation.md'}")
    print((args.out / "foundation.md").read_text())
