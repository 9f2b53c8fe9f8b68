"""Models under ``mpc``, ``he`` and ``hybrid`` side by side, between real processes.

    python -m benchmarks he-models [--models digits-mlp,digits-cnn,minilm] [--repeats 3]
                                   [--seq 32]

Dealer, server and client as separate processes with mTLS on loopback, one thread each.
Digits: ``--repeats`` single-inference sessions per cell (seconds: medians; bytes must
not vary) and the first 100 test images in one session for the agreement. MiniLM: one
session at the ``--seq`` bucket, cosine to plaintext. Per layer: one in-process
inference per protocol, figures from the meters (MiniLM: each layer kind summed over
the six blocks). Records go to
``benchmarks/results/he.jsonl`` (``bench`` = ``he``, one per model and protocol) and a
table to ``he.md`` below the matmul table.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path

import torch

from benchmarks.he_matmul import RESULTS, write_markdown as matmul_markdown
from benchmarks.launch import Deployment
from benchmarks.records import append_records, base_record, human_bytes, read_records
from benchmarks.sessions import finish_record, median_of_sessions, run_session
from models.digits import as_model_input, load_split
from models.registry import get_model
from mpc.ops import PlanOps


def bench(model: str, repeats: int, pool: int, work: Path) -> list[dict]:
    spec = get_model(model)
    weights = spec.load_weights()
    _, x_test, _, y_test = load_split()
    xs = [as_model_input(spec, x_test[i:i + 1]) for i in range(len(x_test))]
    out = []
    with Deployment(model, list(PROTOCOLS), certs=work / "certs") as dep:
        for protocol in PROTOCOLS:
            print(f"[he-models] {model} {protocol}: {repeats} sessions", flush=True)
            rec = median_of_sessions(dep, model, protocol, xs, work, repeats,
                                     compressed=protocol != "mpc")
            ys, _ = run_session(dep, model, protocol, xs[:pool], work)
            r = finish_record(rec, model=model, protocol=protocol, spec=spec, weights=weights,
                              inputs=xs[:pool], outputs=ys, net="loopback", threads=1,
                              labels=y_test[:pool])
            r["bench"] = "he"
            out.append(r)
    return out


def bench_minilm(work: Path, seq: int) -> list[dict]:
    """all-MiniLM-L6-v2 at one length bucket, one inference per session under each
    protocol between real processes; fidelity: cosine and max error to plaintext."""
    import torch.nn.functional as F

    from client.reference import plaintext_forward
    spec = get_model("minilm")
    weights = spec.load_weights()
    x = model_input("minilm", seq)
    ref, plain_s = plaintext_forward(spec, weights, x)
    out = []
    with Deployment("minilm", list(PROTOCOLS), certs=work / "certs") as dep:
        for protocol in PROTOCOLS:
            print(f"[he-models] minilm seq {seq} {protocol}: one session", flush=True)
            ys, rec = run_session(dep, "minilm", protocol, [x], work)
            rec["params"]["seq_len"] = seq
            out.append(base_record("he", **rec, method="", plaintext_seconds=plain_s,
                                   net="loopback", threads=1, fidelity={
                                       "cosine": F.cosine_similarity(ys[0], ref).item(),
                                       "max_abs_error": (ys[0] - ref).abs().max().item(),
                                       "top1_agree": F.cosine_similarity(ys[0], ref).item()
                                       >= 0.999, "error_budget": "cosine >= 0.999"}))
    return out


PROTOCOLS = ("mpc", "he", "hybrid")
MODEL_SCOPES = {"he.keys": "keys"}      # offline scopes that serve the whole model


def _layer_of(scope: str, depth: int = 1) -> str:
    """The layer a meter scope belongs to: its first ``depth`` components (after the
    ``weights.`` / ``dealer.`` prefixes), with transformer block indices dropped so that
    one row sums a layer kind over all blocks (``layer3.attn.qkv`` -> ``attn.qkv``,
    ``weights.l3.ln1`` -> ``ln1``); model-wide scopes map to their own row."""
    if scope in MODEL_SCOPES:
        return MODEL_SCOPES[scope]
    parts = scope.split(".")
    if parts[0] in ("weights", "dealer") and len(parts) > 1:
        parts = parts[1:]
    parts = [p for p in parts if not re.fullmatch(r"layer\d+|l\d+|hybrid|he", p)]
    return ".".join(parts[:depth]) or "output"


def model_input(model: str, seq: int = 32) -> torch.Tensor:
    spec = get_model(model)
    if model == "minilm":
        from benchmarks.transformers import sentence_of_length
        from models.minilm import Tokenizer
        tok = Tokenizer()
        return tok.one_hot(sentence_of_length(tok, seq), seq)
    _, x_test, _, _ = load_split()
    return as_model_input(spec, x_test[:1])


def layer_records(model: str, seq: int = 32) -> list[dict]:
    """Per layer (top-level scope) of one in-process inference, from the meters: online
    seconds (client, wall), bytes both directions and rounds; offline seconds (client,
    wall), bytes both directions (HE replies, opened weights) and the dealer material
    serving the layer; client storage after the offline phase."""
    from benchmarks.in_process import run_in_process
    spec = get_model(model)
    weights = spec.load_weights()
    x = model_input(model, seq)
    depth = 2 if model == "minilm" else 1
    extra = {"seq_len": seq, "blocks_summed": 6} if model == "minilm" else {}
    planner = PlanOps(spec.params, 16)
    spec.forward(planner, PlanOps.tensor(x.shape))
    used_at = planner.const_scopes         # weight -> the op scope that uses it

    def name_of(scope):
        key = scope.removeprefix("weights.") + ".weight"
        if scope.startswith("weights.") and key in used_at:
            return _layer_of(used_at[key], depth)
        return _layer_of(scope, depth)
    out = []
    for protocol in PROTOCOLS:
        roles: dict = {}
        print(f"[he-models] {model} {protocol}: per-layer run (in-process)", flush=True)
        _, cm, sm = run_in_process(spec, weights, x, protocol=protocol,
                                   session_id=f"layers-{protocol}", roles=roles,
                                   recv_timeout=600.0)
        layers: dict = {}

        def cell(name):
            return layers.setdefault(name, {"online_bytes": 0, "rounds": set(), "dealer_bytes": 0,
                                            "offline_bytes": 0, "online_s": 0.0,
                                            "offline_s": 0.0, "storage": 0})
        for phase in ("online", "offline"):
            for meter in (cm, sm):
                for scope, c in meter.scopes(phase).items():
                    if scope == "dealer":
                        continue
                    d = cell(name_of(scope))
                    if scope.startswith("dealer."):
                        d["dealer_bytes"] += c.payload_received
                    elif phase == "online":
                        d["online_bytes"] += c.payload_sent
                        if meter is cm:
                            d["rounds"] |= c.rounds
                    else:
                        d["offline_bytes"] += c.payload_sent
            for scope, secs in cm.scope_seconds(phase).items():
                if scope and not scope.startswith("dealer") and scope in cm.scopes(phase):
                    cell(name_of(scope))[f"{phase}_s"] += secs
        client = roles["client"]
        for key, shape in client.needs.constants:         # the masked weights F it keeps
            cell(_layer_of(used_at[key], depth))["storage"] += 8 * math.prod(shape)
        if protocol == "hybrid":
            for name, info in client.layers.items():
                cell(_layer_of(info["scope"] or name, depth))["storage"] += \
                    8 * info["rows"] * info["matrix"][0]
            cell("keys")["storage"] += client.key_bytes
        elif protocol == "he":
            cell("keys")["storage"] += client.key_bytes
        for name, d in layers.items():
            total = d["online_bytes"] + d["offline_bytes"] + d["dealer_bytes"]
            out.append(base_record("he", model=model, protocol=protocol, method="per-layer",
                                   params={"layer": name, **extra}, online={
                                       "seconds": d["online_s"],
                                       "bytes_both_directions": d["online_bytes"],
                                       "rounds": len(d["rounds"])},
                                   offline={"seconds": d["offline_s"],
                                            "bytes_both_directions": d["offline_bytes"],
                                            "dealer_bytes": d["dealer_bytes"]},
                                   total_bytes=total, client_storage_bytes=d["storage"],

                                   threads=1, net="in-process", dealer="in-process"))
    return out


def agreement(r) -> str:
    f = r["fidelity"]
    if "cosine" in f:
        return f"cosine {f['cosine']:.6f} (seq {r['params'].get('seq_len')})"
    return f"{f['top1_agree']} ({f.get('samples', '?')} images)"


def model_markdown(records) -> list[str]:
    lines = ["", "## Models: mpc, he and hybrid (real processes, mTLS, one thread each)", "",
             "Dealer: a separate process under all three; what it serves is in each record's "
             "`dealer_for` (hybrid: truncations and non-linear material only).", "",
             "| model | protocol | online s | online sent (client) | rounds | offline s | "
             "offline sent (client) | total bytes | client storage | agreement | "
             "max abs error |",
             "|" + "---|" * 11]
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    for r in sorted(records, key=lambda r: (r["model"], order.get(r["protocol"], 9))):
        on, off, f = r["online"], r["offline"], r["fidelity"]
        lines.append(f"| {r['model']} | {r['protocol']} | {on['seconds']:.3f} | "
                     f"{human_bytes(on['bytes_sent'])} | {on['rounds']:g} | {off['seconds']:.2f} | "
                     f"{human_bytes(off['bytes_sent'])} | {human_bytes(r['total_bytes'])} | "
                     f"{human_bytes(r.get('client_storage_bytes', 0))} | "
                     f"{agreement(r)} | {f['max_abs_error']:.1e} |")
    return lines


def layer_markdown(records) -> list[str]:
    lines = ["", "## Per layer (one inference, in-process parties, one thread each; bytes both "
             "directions; seconds: the client's wall time in the layer's scope)", "",
             "`keys` is the model-wide HE key set-up; `output` the output reveal.", "",
             "| model | layer | protocol | online s | online bytes | rounds | offline s | "
             "offline bytes | dealer material | total bytes | client storage |",
             "|" + "---|" * 11]
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    for r in sorted(records, key=lambda r: (r["model"], r["params"]["layer"],
                                            order.get(r["protocol"], 9))):
        on, off = r["online"], r["offline"]
        lines.append(f"| {r['model']} | {r['params']['layer']} | {r['protocol']} | "
                     f"{on.get('seconds', 0):.4f} | {human_bytes(on['bytes_both_directions'])} | "
                     f"{on['rounds']} | {off.get('seconds', 0):.3f} | "
                     f"{human_bytes(off.get('bytes_both_directions', 0))} | "
                     f"{human_bytes(off['dealer_bytes'])} | {human_bytes(r.get('total_bytes', 0))} | "
                     f"{human_bytes(r.get('client_storage_bytes', 0))} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks he-models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits-mlp,digits-cnn")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--seq", type=int, default=32, help="MiniLM length bucket")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = []
    with tempfile.TemporaryDirectory(prefix="pinfer-he-") as tmp:
        for model in args.models.split(","):
            if model == "minilm":
                recs += bench_minilm(Path(tmp), args.seq)
            else:
                recs += bench(model, args.repeats, args.pool, Path(tmp))
            recs += layer_records(model, args.seq)
    append_records(args.out / "he.jsonl", recs)
    print(rewrite_markdown(args.out))


def rewrite_markdown(out: Path) -> str:
    """he.md from the latest record of each kind in he.jsonl (matmul, models, layers)."""
    matmul, models, per_layer, newest_git = {}, {}, {}, {}
    for r in read_records(out / "he.jsonl", "he"):
        if r.get("op") == "matmul":
            matmul[(tuple(r["params"]["shape"]), r["method"])] = r
        elif r.get("method") == "per-layer":
            if r["git"] != newest_git.setdefault(r["model"], r["git"]):
                # a newer run of this model's layers replaces the older one entirely
                per_layer = {k: v for k, v in per_layer.items() if k[0] != r["model"]}
                newest_git[r["model"]] = r["git"]
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
