"""One command to compare protocols on a model and a network.

    python -m benchmarks run --models digits-cnn,minilm --protocols plaintext,mpc,crypten,he,hybrid,ee
                             --net loopback,proxy-lan,proxy-wan,model-lan,model-wan
                             --repeat 5 [--seqs 32,128] --out results.jsonl
    python -m benchmarks report results.jsonl

``run`` launches real dealer, server and client processes (mTLS, one thread each) and
runs every (model, length bucket, network, protocol) combination: ``--repeat``
single-inference sessions each, seconds as medians with their spread, bytes from the
meters (exact; they must not vary, except SEAL's compressed ciphertexts, by under 1%).
Networks:
  loopback   the processes on this machine, no shaping (measured);
  proxy-lan  client <-> server through ``../shared/tools/wireproxy.py`` at 1 Gbit/s and
             0.5 ms RTT (measured; the proxy also counts the true bytes on the wire, TLS
             and HTTP/2 included, beside the meter's payload);
  proxy-wan  the same at 100 Mbit/s and 40 ms RTT (measured);
  model-lan, model-wan  modelled from the loopback run: its seconds + rounds x RTT +
             bytes / bandwidth (online bytes both ways; offline: every party's bytes).
The dealer link is never shaped (it is offline traffic). ``ee`` runs on its own host
with a fresh owner deployment per model. One record per combination, schema of
ARCHITECTURE.md (``bench`` = ``summary``). ``report`` writes ``summary.md`` and plots.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.launch import WIREPROXY, Deployment
from benchmarks.records import append_records, base_record
from benchmarks.sessions import ERROR_BUDGET, read_wire, run_session
from client.reference import plaintext_forward
from protocols.config import Config
from models.registry import get_model

NETS = {"loopback": None, "proxy-lan": (0.5, 1000.0), "proxy-wan": (40.0, 100.0)}
# On the shaped WAN link, HTTP/2 keepalive pings queue behind bulk transfers (keys, the
# dealer's material) and a 1 s ping timeout declares a live peer dead: WAN runs use 10 s.
NET_SETTINGS = {"proxy-wan": ["transport.keepalive_ms=10000"]}
MODELLED = {"model-lan": (0.5, 1000.0), "model-wan": (40.0, 100.0)}   # RTT ms, Mbit/s


def model_inputs(model: str, seq: int | None) -> torch.Tensor:
    if model == "minilm":
        from benchmarks.transformers import sentence_of_length
        from models.minilm import Tokenizer
        tok = Tokenizer()
        return tok.one_hot(sentence_of_length(tok, seq), seq)
    from models.digits import as_model_input, load_split
    _, x_test, _, _ = load_split()
    return as_model_input(get_model(model), x_test[:1])


def _fidelity(spec, y, ref) -> dict:
    if spec.task == "embedding":
        return {"cosine": F.cosine_similarity(y, ref).min().item(),
                "max_abs_error": (y - ref).abs().max().item()}
    return {"max_abs_error": (y - ref).abs().max().item(),
            "top1_agree": bool((y.argmax(-1) == ref.argmax(-1)).all()),
            "error_budget": ERROR_BUDGET.get(spec.name)}


def worst_fidelity(spec, outputs, ref) -> dict:
    """The worst session's figures (lowest cosine, largest error, any top-1 miss), with every
    session's own under ``sessions``: one wrapped truncation in one session must show."""
    each = [_fidelity(spec, y, ref) for y in outputs]
    worst = dict(each[0])
    worst["max_abs_error"] = max(f["max_abs_error"] for f in each)
    if "cosine" in worst:
        worst["cosine"] = min(f["cosine"] for f in each)
    if "top1_agree" in worst:
        worst["top1_agree"] = all(f["top1_agree"] for f in each)
    worst["sessions"] = each
    return worst


def measure(dep, model, protocol, x, repeat, work, net, ee_key=None, settings=()) -> dict:
    """``repeat`` sessions; the median session's record with medians and spreads."""
    spec = get_model(model)
    settings = list(settings) + NET_SETTINGS.get(net, [])
    config = Config().with_overrides(settings) if settings else None
    runs = [run_session(dep, model, protocol, [x], work, config, ee_key) for _ in range(repeat)]
    recs = [r for _, r in runs]
    rec = recs[len(recs) // 2]
    for phase in ("offline", "online"):
        secs = [r[phase]["seconds"] for r in recs]
        rec[phase]["seconds"] = statistics.median(secs)
        rec[phase]["spread"] = [min(secs), max(secs)]
        sent = [r[phase]["bytes_sent"] for r in recs]
        if max(sent) > 1.01 * min(sent):
            raise RuntimeError(f"{protocol}/{model}/{net}: {phase} bytes varied: {sent}")
    ref, plain_s = plaintext_forward(spec, spec.load_weights(), x)
    rec.update(plaintext_seconds=plain_s,
               fidelity=worst_fidelity(spec, [out[0] for out, _ in runs], ref), net=net,
               threads=1, time_ratio=rec["online"]["seconds"] / plain_s)
    rec["params"].update(repeats=repeat, settings=settings)
    if x.dim() == 3:
        rec["params"]["seq_len"] = x.shape[1]
    return rec


def modelled(rec: dict, net: str) -> dict:
    """A loopback record's figures on a modelled link: + rounds x RTT + bytes / bandwidth."""
    rtt_ms, mbps = MODELLED[net]
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in rec.items()}
    for phase in ("offline", "online"):
        d = dict(rec[phase])
        server = rec["parties"].get("server", {}).get(phase, {})
        both = d["bytes_sent"] + server.get("bytes_sent", 0)
        if phase == "offline":
            both += rec["parties"].get("dealer", {}).get("offline", {}).get("bytes_sent", 0)
        d["seconds"] = rec[phase]["seconds"] + d["rounds"] * rtt_ms / 1e3 + both * 8 / (mbps * 1e6)
        d.pop("spread", None)
        out[phase] = d
    out["net"], out["modelled"] = net, {"rtt_ms": rtt_ms, "mbps": mbps, "from": "loopback"}
    out["time_ratio"] = out["online"]["seconds"] / rec["plaintext_seconds"]
    return out


def _wire_total(dep, connections: int = 0, timeout: float = 15.0) -> tuple[int, int]:
    """(connections, bytes both ways, TLS and HTTP/2 included) the wire proxy has passed,
    once it reports at least ``connections`` connections, all closed."""
    deadline = time.monotonic() + timeout
    while True:
        data = read_wire(dep.wire_report, timeout=1.0) if dep.wire_report.is_file() else None
        seen = len(data["connections"]) if data else 0
        if seen >= connections or time.monotonic() > deadline:
            if seen < connections:
                raise RuntimeError(f"wire proxy reported {seen} connections, expected {connections}")
            return seen, (data["total"]["up_bytes"] + data["total"]["down_bytes"]) if data else 0
        time.sleep(0.1)


def _ee_deployment(model: str, work: Path):
    from models.equivariant import EeKey
    from server.ee_owner import make_deployment
    spec = get_model(model)
    host, key_file = work / f"ee-{model}", work / f"ee-{model}.key"
    make_deployment(spec, spec.load_weights(), host, key_file)
    return host, EeKey.load(key_file)


def unsupported(model: str, protocol: str) -> str | None:
    """Why a protocol cannot run a model (None: it can)."""
    spec = get_model(model)
    if protocol == "ee" and not spec.notes.get("ee"):
        return "ee transforms token models only (a digits image has nothing to permute)"
    if protocol in ("he", "hybrid", "crypten") and spec.decoder is not None:
        return f"{protocol} refuses decoders"
    return None


def run(models, protocols, nets, repeat, seqs, work: Path, progress=print,
        sink=None, settings=()) -> list[dict]:
    combos = [(m, s) for m in models for s in (seqs if m == "minilm" else [None])]
    measured = [n for n in nets if n in NETS]
    if any(n in MODELLED for n in nets) and "loopback" not in measured:
        measured.insert(0, "loopback")
    total, done, t0, out = len(combos) * len(measured) * len(protocols), 0, time.time(), []
    for model, seq in combos:
        x = model_inputs(model, seq)
        for net in measured:
            proxy = NETS[net]
            proxy_args = [] if proxy is None else ["--rtt-ms", str(proxy[0]), "--mbps", str(proxy[1])]
            runnable = [p for p in protocols if not unsupported(model, p)]
            for p in protocols:
                if p not in runnable:
                    done += 1
                    progress(f"[run {done}/{total}] {model} {net} {p}: skipped "
                             f"({unsupported(model, p)})")
            groups = [[p for p in runnable if p != "ee"]] + ([["ee"]] if "ee" in runnable else [])
            for group in groups:
                if not group:
                    continue
                extra = sum((["--set", o] for o in list(settings) + NET_SETTINGS.get(net, [])), [])
                key = None
                if group == ["ee"]:
                    host, key = _ee_deployment(model, work)
                    extra += ["--ee-deployment", str(host)]
                place = work / f"{model}-{seq}-{net}-{'-'.join(group)}"    # own proxy report
                place.mkdir(parents=True, exist_ok=True)
                with Deployment(model, group, certs=work / "certs", proxy=proxy is not None,
                                proxy_args=proxy_args, extra_server_args=extra,
                                workdir=place) as dep:
                    for protocol in group:
                        done += 1
                        progress(f"[run {done}/{total} {time.time() - t0:.0f}s] {model}"
                                 f"{'' if seq is None else f' seq {seq}'} {net} {protocol}")
                        seen, before = _wire_total(dep) if proxy is not None else (0, 0)
                        rec = measure(dep, model, protocol, x, repeat, work, net, key, settings)
                        if proxy is not None:       # per session, client <-> server link
                            _, after = _wire_total(dep, seen + repeat)
                            rec["wire_bytes"] = (after - before) / repeat
                        new = [base_record("summary", **rec, method="")]
                        if net == "loopback":
                            new += [base_record("summary", **modelled(rec, n), method="")
                                    for n in nets if n in MODELLED]
                        new = [r for r in new if r["net"] in nets]
                        if sink is not None:
                            sink(new)                  # kept even if a later run fails
                        out += new
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits-cnn")
    ap.add_argument("--protocols", default="plaintext,mpc,crypten,he,hybrid,ee")
    ap.add_argument("--net", default="loopback,proxy-lan,proxy-wan,model-lan,model-wan")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seqs", default="32", help="MiniLM length buckets")
    ap.add_argument("--out", type=Path, default=Path("results.jsonl"))
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="config override for every process, e.g. compare.method=bitdecomp")
    args = ap.parse_args(argv)
    nets = args.net.split(",")
    unknown = [n for n in nets if n not in NETS and n not in MODELLED]
    if unknown:
        raise SystemExit(f"unknown network {unknown}; known: {sorted(NETS) + sorted(MODELLED)}")
    if any(NETS.get(n) for n in nets) and not WIREPROXY.is_file():
        raise SystemExit(f"proxy-lan / proxy-wan need the wire proxy at {WIREPROXY} (beside "
                         "the checkout); use model-lan / model-wan without it")
    torch.set_num_threads(1)
    command = "python -m benchmarks run " + " ".join(argv if argv is not None else sys.argv[2:])
    with tempfile.TemporaryDirectory(prefix="pinfer-run-") as tmp:
        recs = run(args.models.split(","), args.protocols.split(","), nets, args.repeat,
                   [int(s) for s in args.seqs.split(",")], Path(tmp),
                   sink=lambda new: append_records(args.out, [
                       {**r, "params": {**r["params"], "command": command}} for r in new]),
                   settings=args.set)
    print(f"{len(recs)} records appended to {args.out}")
