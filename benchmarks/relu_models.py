"""ReLU digits models between real processes: exact ReLU (fss and bitdecomp) and Circa.

    python -m benchmarks relu-models [--pool 360]

For each ReLU model: one session per comparison setting with a pool of all 360 test
images (offline for all, then each image), agreement with plaintext on images whose
margin exceeds twice the error budget (near-ties counted), accuracy, costs per inference.
Appends records to ``benchmarks/results/nonlinear.jsonl`` and writes
``benchmarks/results/relu_models.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.launch import Deployment
from benchmarks.records import append_records, human_bytes
from benchmarks.sessions import finish_record, run_session
from models.digits import as_model_input, load_split
from models.registry import get_model
from protocols.config import Config

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [("fss", []), ("circa-k8", ["compare.relu_drop_bits=8"]),
            ("circa-k12", ["compare.relu_drop_bits=12"]), ("bitdecomp", ["compare.method=bitdecomp"])]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks relu-models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=360)
    p.add_argument("--models", default="digits-mlp-relu,digits-cnn-relu")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, X_test, _, y_test = load_split()
    records = []
    with tempfile.TemporaryDirectory(prefix="pinfer-relu-") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            spec = get_model(model)
            weights = spec.load_weights()
            xs = [as_model_input(spec, X_test[i:i + 1]) for i in range(args.pool)]
            for method, overrides in SETTINGS:
                cfg = Config().with_overrides(overrides)
                extra = sum((["--set", o] for o in overrides), [])
                print(f"[relu-models] {model} {method}: pool of {args.pool}", flush=True)
                with Deployment(model, ["mpc"], certs=work / "certs",
                                extra_server_args=extra) as dep:
                    ys, rec = run_session(dep, model, "mpc", xs, work, config=cfg)
                r = finish_record(rec, model=model, protocol="mpc", spec=spec, weights=weights,
                                  inputs=xs, outputs=ys, net="loopback", threads=1,
                                  labels=y_test[:args.pool])
                r["bench"], r["method"] = "nonlinear", method
                r["params"]["config"] = overrides
                records.append(r)
    append_records(args.out / "nonlinear.jsonl", records)
    lines = ["# ReLU digits models under mpc (all 360 test images, one pooled session each)", "",
             f"git {records[0]['git']}; dealer, server, client as separate processes with mTLS "
             "on loopback, one thread each; `python -m benchmarks relu-models`.", "",
             "| model | method | online s/inf | online sent/inf | rounds | offline recv/inf "
             "(client) | total bytes/inf | agree (clear margins) | agree (all) | near-ties | "
             "accuracy (plaintext) | max err |", "|" + "---|" * 12]
    for r in records:
        f, on = r["fidelity"], r["online"]
        agree_all = "yes" if f["top1_agree_all"] else "no"
        lines.append(
            f"| {r['model']} | {r['method']} | {on['seconds']:.4f} | {human_bytes(on['bytes_sent'])} | "
            f"{on['rounds']:g} | {human_bytes(r['offline_per_inference']['bytes_received'])} | "
            f"{human_bytes(r['total_bytes'])} | {f['top1_agree']} | {agree_all} | {f['near_ties']} | "
            f"{f['accuracy']:.4f} ({f['plaintext_accuracy']:.4f}) | {f['max_abs_error']:.2e} |")
    (args.out / "relu_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
