"""Nonlinear benchmark: ReLU on 100,000 elements and softmax on 128x128 under our ``mpc``
(every comparison method) and under CrypTen 0.4.1 (TFP and TTP), same run, same machine,
one thread per party; plus Circa's fault rate against the dropped bits.

    python -m benchmarks nonlinear [--repeats 3] [--no-crypten]

Our parties and dealer run as three processes (``benchmarks.two_party``); bytes and rounds
come from the meter (payload bytes each party sends), CrypTen's from its own tally.
Writes ``benchmarks/results/nonlinear.md`` and appends ``nonlinear.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from approximations.normalization import softmax
from benchmarks import two_party
from benchmarks.records import append_records, base_record, human_bytes

RESULTS = Path(__file__).resolve().parent / "results"
FRAC = 16
MODULE = "benchmarks.nonlinear"   # imported by the party processes to register the ops


@two_party.register("relu")
def relu_op(ops, x):
    with ops.scope("op"):
        return ops.relu(x)


@two_party.register("softmax")
def softmax_op(ops, x):
    with ops.scope("op"):
        return softmax(ops, x, FRAC)


METHODS = {
    "relu": [("fss", ["compare.bits=40"]), ("fss-64bit", ["compare.bits=64"]),
             ("circa-k12", ["compare.bits=40", "compare.relu_drop_bits=12"]),
             ("bitdecomp", ["compare.method=\"bitdecomp\"", "compare.bits=40"])],
    "softmax": [("fss", ["compare.bits=40"]), ("fss-24bit", ["compare.bits=24"]),
                ("bitdecomp", ["compare.method=\"bitdecomp\"", "compare.bits=40"])],
}


def inputs(op: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if op == "relu":
        return torch.randn(100_000, generator=g, dtype=torch.float64) * 4
    return torch.randn(128, 128, generator=g, dtype=torch.float64) * 2


def reference(op: str, x):
    return torch.relu(x) if op == "relu" else torch.softmax(x, -1)


def measure(op: str, method: str, overrides: list[str], repeats: int) -> dict:
    x = inputs(op)
    runs = [two_party.run(op, x, overrides, MODULE) for _ in range(repeats)]
    r = runs[0]
    c, s = r[0]["summary"], r[1]["summary"]
    err = (r[0]["y"] - reference(op, x)).abs().max().item()
    online = {k: r[0]["op"][k] for k in ("bytes_sent", "bytes_received", "rounds")}
    online["seconds"] = statistics.median(run[0]["online_s"] for run in runs)
    online["note"] = "bytes and rounds: the op's scope; seconds: the online phase (op + output)"
    offline = {"seconds": statistics.median(run[0]["offline_s"] for run in runs),
               "bytes_sent": c["offline"]["bytes_sent"],
               "bytes_received": c["offline"]["bytes_received"], "rounds": c["offline"]["rounds"]}
    dealer_sent = r["dealer"]["sent"]
    total = c["offline"]["bytes_sent"] + s["offline"]["bytes_sent"] + dealer_sent \
        + c["online"]["bytes_sent"] + s["online"]["bytes_sent"]
    return base_record(
        "nonlinear", op=op, protocol="mpc", method=method,
        params={"shape": list(x.shape), "repeats": repeats, "config": overrides,
                "frac_bits": FRAC},
        online=online, offline=offline,
        parties={"client": {**c, "dealer": r[0]["dealer"]}, "server": {**s, "dealer": r[1]["dealer"]},
                 "dealer": {"offline": {"bytes_sent": dealer_sent}}},
        total_bytes=total, client_storage_bytes=r[0]["storage"], fidelity={"max_abs_error": err},
        dealer="separate-process", threads=1, net="mp-queues")


def circa_faults(ks=(0, 4, 8, 12, 16)) -> list[dict]:
    """Fault rate of Circa ReLU on 100k elements: outputs that differ from exact ReLU."""
    x = inputs("relu")
    exact = torch.relu(torch.round(x * 2 ** FRAC) / 2 ** FRAC)
    out = []
    for k in ks:
        r = two_party.run("relu", x, ["compare.bits=40", f"compare.relu_drop_bits={k}"], MODULE)
        diff = (r[0]["y"] - exact).abs()
        out.append(base_record(
            "nonlinear", op="relu", protocol="mpc", method=f"circa-k{k}",
            params={"shape": [len(x)], "drop_bits": k, "frac_bits": FRAC},
            fidelity={"fault_rate": (diff > 0).double().mean().item(),
                      "max_abs_error": diff.max().item(),
                      "max_fault_ulps": (diff.max() * 2 ** FRAC).item()},
            offline={"bytes_received": r[0]["summary"]["offline"]["bytes_received"]},
            client_storage_bytes=r[0]["storage"], dealer="separate-process", threads=1))
    return out


def _crypten_dealer(r: dict) -> str:
    dealer = r.get("parties", {}).get("dealer", {})
    sent = dealer.get("online", {}).get("bytes_sent")
    return f"{human_bytes(sent)} from the TTP dealer, during the op" if sent else \
        "none (party 0 makes triples)"


def table(records: list[dict]) -> str:
    head = ("op | protocol | method | online s | online sent/party | rounds | offline s | "
            "offline recv (client) | total bytes (all parties, both phases) | client storage | "
            "max err")
    lines = ["| " + head + " |", "|" + "---|" * len(head.split("|"))]
    for r in records:
        if r.get("protocol") == "crypten":
            on = r["online"]
            lines.append(f"| {r['op']} | crypten | {r['method']} | {on['seconds']:.3f} | "
                         f"{human_bytes(on['bytes_sent'])} | {on['rounds']} | - | "
                         f"{_crypten_dealer(r)} | "
                         f"{human_bytes(r['total_bytes'])} | - | {r['fidelity']['max_abs_error']:.2e} |")
            continue
        on, off = r["online"], r["offline"]
        lines.append(f"| {r['op']} | mpc | {r['method']} | {on['seconds']:.3f} | "
                     f"{human_bytes(on['bytes_sent'])} | {on['rounds']} | {off['seconds']:.2f} | "
                     f"{human_bytes(off['bytes_received'])} | {human_bytes(r['total_bytes'])} | "
                     f"{human_bytes(r['client_storage_bytes'])} | "
                     f"{r['fidelity']['max_abs_error']:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks nonlinear", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-crypten", action="store_true", help="skip the CrypTen rows")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    records = []
    for op, methods in METHODS.items():
        for method, overrides in methods:
            print(f"[nonlinear] mpc {op} {method}", flush=True)
            records.append(measure(op, method, overrides, args.repeats))
    if not args.no_crypten:
        from benchmarks import crypten_baseline
        print("[nonlinear] crypten (tfp, ttp)", flush=True)
        records += crypten_baseline.run(repeats=args.repeats)
    print("[nonlinear] circa fault rates", flush=True)
    faults = circa_faults()
    append_records(args.out / "nonlinear.jsonl", records + faults)
    print(write_markdown(records, faults, args.out, args.repeats))


def write_markdown(records: list[dict], faults: list[dict], out: Path, repeats: int) -> str:
    lines = ["# Nonlinear benchmark", "",
             f"Machine: {records[0]['machine'].get('cpu')} ({records[0]['machine'].get('cores')} "
             f"cores), git {records[0]['git']}; one torch thread per party; "
             f"`python -m benchmarks nonlinear --repeats {repeats}`.", "",
             "ReLU on 100,000 elements (randn x 4), softmax on 128x128 (randn x 2). Online: "
             "median seconds of the online phase (op and output reveal); bytes each party sends "
             "inside the op (ours: meter payload; CrypTen: its tally of sent bytes, party 0); "
             "rounds of the op. Total: every party's sends over both phases, dealer included. "
             "CrypTen TFP makes its triples inside the online run (party 0 generates them in the "
             "clear: insecure); TTP is the fair comparison for totals. Our parties and dealer run "
             "as three processes linked by multiprocessing queues (benchmarks/two_party.py). "
             "CrypTen's TTP rounds count party 0's dealer requests too (its peer rounds stay 9 "
             "for ReLU and 116 for softmax).", "",
             table(records), "", "## Circa ReLU: faults against dropped bits (100,000 elements)",
             "", "| dropped bits k | fault rate | max error (ulps) | offline recv (client) |",
             "|---|---|---|---|"]
    for f in faults:
        lines.append(f"| {f['params']['drop_bits']} | {f['fidelity']['fault_rate']:.4%} | "
                     f"{f['fidelity']['max_fault_ulps']:.0f} | "
                     f"{human_bytes(f['offline']['bytes_received'])} |")
    text = "\n".join(lines) + "\n"
    (out / "nonlinear.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
