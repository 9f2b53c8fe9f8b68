"""Digits models under ``mpc`` and ``he`` side by side, between real processes.

    python -m benchmarks he-models [--models digits-mlp,digits-cnn] [--repeats 3]

Dealer, server and client as separate processes with mTLS on loopback, one thread each;
``--repeats`` single-inference sessions per cell (seconds: medians; bytes must not vary)
and the first 100 test images in one session for the agreement. Records go to
``benchmarks/results/he.jsonl`` (``bench`` = ``he``, one per model and protocol) and a
table to ``he.md`` below the matmul table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.he_matmul import RESULTS, write_markdown as matmul_markdown
from benchmarks.launch import Deployment
from benchmarks.records import append_records, human_bytes, read_records
from benchmarks.sessions import finish_record, median_of_sessions, run_session
from models.digits import as_model_input, load_split
from models.registry import get_model


def bench(model: str, repeats: int, pool: int, work: Path) -> list[dict]:
    spec = get_model(model)
    weights = spec.load_weights()
    _, x_test, _, y_test = load_split()
    xs = [as_model_input(spec, x_test[i:i + 1]) for i in range(len(x_test))]
    out = []
    with Deployment(model, ["mpc", "he"], certs=work / "certs") as dep:
        for protocol in ("mpc", "he"):
            print(f"[he-models] {model} {protocol}: {repeats} sessions", flush=True)
            rec = median_of_sessions(dep, model, protocol, xs, work, repeats,
                                     compressed=protocol == "he")
            ys, _ = run_session(dep, model, protocol, xs[:pool], work)
            r = finish_record(rec, model=model, protocol=protocol, spec=spec, weights=weights,
                              inputs=xs[:pool], outputs=ys, net="loopback", threads=1,
                              labels=y_test[:pool])
            r["bench"] = "he"
            out.append(r)
    return out


def layer_records(model: str) -> list[dict]:
    """Per top-level scope (layer) of one in-process inference: online bytes (both ways)
    and rounds, and the dealer material serving it, under mpc and he."""
    from benchmarks.in_process import run_in_process
    from benchmarks.records import base_record
    spec = get_model(model)
    _, x_test, _, _ = load_split()
    x = as_model_input(spec, x_test[:1])
    out = []
    for protocol in ("mpc", "he"):
        _, cm, sm = run_in_process(spec, spec.load_weights(), x, protocol=protocol,
                                   session_id=f"layers-{protocol}")
        layers: dict = {}
        for phase, prefix in (("online", ""), ("offline", "dealer.")):
            for meter in (cm, sm):
                for scope, c in meter.scopes(phase).items():
                    if not scope.startswith(prefix) or scope == "dealer":
                        continue
                    name = scope[len(prefix):].split(".")[0] or "output"
                    cell = layers.setdefault(name, {"online_bytes": 0, "rounds": set(),
                                                    "dealer_bytes": 0})
                    if phase == "online":
                        cell["online_bytes"] += c.payload_sent
                        if meter is cm:
                            cell["rounds"] |= c.rounds
                    else:
                        cell["dealer_bytes"] += c.payload_received
        for name, cell in layers.items():
            out.append(base_record("he", model=model, protocol=protocol, method="per-layer",
                                   params={"layer": name}, online={
                                       "bytes_both_directions": cell["online_bytes"],
                                       "rounds": len(cell["rounds"])},
                                   offline={"dealer_bytes": cell["dealer_bytes"]},
                                   threads=1, net="in-process", dealer="in-process"))
    return out


def model_markdown(records) -> list[str]:
    lines = ["", "## Models: mpc against he (real processes, mTLS, one thread each)", "",
             "| model | protocol | online s | online sent (client) | rounds | offline s | "
             "offline sent (client) | total bytes | agreement (100 images) | max abs error |",
             "|" + "---|" * 10]
    for r in records:
        on, off, f = r["online"], r["offline"], r["fidelity"]
        lines.append(f"| {r['model']} | {r['protocol']} | {on['seconds']:.3f} | "
                     f"{human_bytes(on['bytes_sent'])} | {on['rounds']:g} | {off['seconds']:.2f} | "
                     f"{human_bytes(off['bytes_sent'])} | {human_bytes(r['total_bytes'])} | "
                     f"{f['top1_agree']} | {f['max_abs_error']:.1e} |")
    return lines


def layer_markdown(records) -> list[str]:
    lines = ["", "## Per layer (one inference, in-process parties; bytes both directions)", "",
             "| model | layer | protocol | online bytes | rounds | dealer material |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["model"], r["params"]["layer"], r["protocol"])):
        lines.append(f"| {r['model']} | {r['params']['layer']} | {r['protocol']} | "
                     f"{human_bytes(r['online']['bytes_both_directions'])} | "
                     f"{r['online']['rounds']} | {human_bytes(r['offline']['dealer_bytes'])} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks he-models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits-mlp,digits-cnn")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = []
    with tempfile.TemporaryDirectory(prefix="pinfer-he-") as tmp:
        for model in args.models.split(","):
            recs += bench(model, args.repeats, args.pool, Path(tmp))
            recs += layer_records(model)
    append_records(args.out / "he.jsonl", recs)
    print(rewrite_markdown(args.out))


def rewrite_markdown(out: Path) -> str:
    """he.md from the latest record of each kind in he.jsonl (matmul, models, layers)."""
    matmul, models, per_layer = {}, {}, {}
    for r in read_records(out / "he.jsonl", "he"):
        if r.get("op") == "matmul":
            matmul[(tuple(r["params"]["shape"]), r["method"])] = r
        elif r.get("method") == "per-layer":
            per_layer[(r["model"], r["protocol"], r["params"]["layer"])] = r
        elif r.get("model"):
            models[(r["model"], r["protocol"])] = r
    text = matmul_markdown(list(matmul.values()))
    if models:
        text += "\n".join(model_markdown(list(models.values()))) + "\n"
    if per_layer:
        text += "\n".join(layer_markdown(list(per_layer.values()))) + "\n"
    (out / "he.md").write_text(text)
    return text
