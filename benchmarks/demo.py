"""``make demo``: a dealer, a server and clients as separate processes with mutual TLS on
loopback; the digits MLP and CNN under ``plaintext``, ``mpc``, ``he``, ``hybrid`` and ``crypten``
on a few test images; one side-by-side table.

    python -m benchmarks demo [--images 5] [--models digits-mlp,digits-cnn]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.launch import Deployment
from benchmarks.records import human_bytes
from benchmarks.sessions import ERROR_BUDGET, run_session
from client.reference import plaintext_forward
from models.digits import as_model_input, load_split
from models.registry import get_model

PROTOCOLS = ("plaintext", "mpc", "he", "hybrid", "crypten")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5, help="test images per model (default 5)")
    p.add_argument("--models", default="digits-mlp,digits-cnn,digits-cnn-relu",
                   help="comma-separated models")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, X_test, _, y_test = load_split()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pinfer-demo-") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            spec = get_model(model)
            weights = spec.load_weights()
            xs = [as_model_input(spec, X_test[i:i + 1]) for i in range(args.images)]
            print(f"[demo] starting dealer and server for {model} (mTLS, separate processes)",
                  flush=True)
            with Deployment(model, list(PROTOCOLS), certs=work / "certs") as dep:
                print(f"[demo]   dealer {dep.dealer_address}, server {dep.server_address}",
                      flush=True)
                for protocol in PROTOCOLS:
                    ys, rec = run_session(dep, model, protocol, xs, work)
                    y = torch.cat(ys)
                    ref = torch.cat([plaintext_forward(spec, weights, x, repeats=1)[0] for x in xs])
                    preds = y.argmax(-1).tolist()
                    rows.append({
                        "model": model, "protocol": protocol,
                        "preds": "".join(map(str, preds)),
                        "labels": "".join(map(str, y_test[:args.images])),
                        "agree": f"{sum(a == b for a, b in zip(preds, ref.argmax(-1).tolist()))}"
                                 f"/{len(xs)}",
                        "online": rec["online"], "offline": rec["offline"],
                        "total": rec["total_bytes"], "storage": rec["client_storage_bytes"],
                        "err": (y - ref).abs().max().item(), "dealer": rec["dealer"]})
                    print(f"[demo]   {protocol}: {len(xs)} images done", flush=True)
    head = ("model", "protocol", "predicted", "labels", "agree w/ plain", "online s/inf",
            "online bytes/inf", "rounds", "offline s", "total bytes/inf", "client storage",
            "max |err|", "dealer")
    table = [head]
    for r in rows:
        on, off = r["online"], r["offline"]
        table.append((r["model"], r["protocol"], r["preds"], r["labels"], r["agree"],
                      f"{on['seconds']:.4f}", human_bytes(on["bytes_sent"] + on["bytes_received"]),
                      f"{on['rounds']:g}", f"{off['seconds']:.3f}", human_bytes(r["total"]),
                      human_bytes(r["storage"]), f"{r['err']:.1e}", r["dealer"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    print()
    for i, row in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    budgets = {m: ERROR_BUDGET[m] for m in args.models.split(",")}
    print(f"\nOnline figures are medians per inference, client's view (sent + received). "
          f"Error budget on logits: {budgets}. plaintext sends the input in the clear "
          "(no privacy); mpc: 2PC with a non-colluding dealer process (ReLU by FSS keys); "
          "he: CKKS for the layers with server weights (keys sent offline), 2PC for the rest; "
          "hybrid: BFV masks made offline, one masked vector per layer online, dealer for the "
          "rest; crypten: CrypTen 0.4.1 over our channel, its TFP provider making every triple "
          "in the client (a cost baseline, no security against the client). The clients here ask for full logits (--set output.policy=full on server and "
          "client, to measure the error); by default a server reveals only the label (the "
          "one-hot of the argmax, computed inside the protocol) and --query-budget N caps "
          "each client's queries.")


if __name__ == "__main__":
    main()
