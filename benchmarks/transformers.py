"""Transformer benchmark: all-MiniLM-L6-v2 sentence embeddings, plaintext against mpc.

    python -m benchmarks transformers [--seqs 32,128] [--sentences 50]

1. Costs between real processes (dealer, server, client; mTLS on loopback; one thread
   each), one inference per session at each length bucket: offline and online seconds,
   bytes, rounds, totals, client storage, peak RSS of every process, and the ratio to the
   plaintext forward on the same CPU.
2. Fidelity (in-process parties, same protocol code): every sentence of
   ``benchmarks.sentences`` privately at its own bucket; cosine to plaintext; and a
   semantic search (each sentence as the query against the others, plaintext corpus):
   top-1 agreement wherever the plaintext top-2 gap exceeds twice the error budget.
Records: ``benchmarks/results/transformers.jsonl``; table: ``transformers.md``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.in_process import run_in_process
from benchmarks.launch import Deployment
from benchmarks.records import append_records, base_record, human_bytes, read_records
from benchmarks.sentences import SENTENCES
from benchmarks.sessions import run_session
from client.reference import plaintext_forward
from models.minilm import MINILM, Tokenizer
from protocols.config import Config

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"bitdecomp": ["compare.method=bitdecomp", "compare.bits=32"],
            "fss": ["compare.method=fss", "compare.bits=28"]}
SIM_BUDGET = 0.005     # declared error budget on a cosine similarity


def progress(msg):
    print(f"[transformers] {msg}", flush=True)


def sentence_of_length(tok: Tokenizer, seq: int) -> str:
    words = "private inference keeps the sentence and the model secret".split()
    text = ""
    while len(tok.ids(text + " " + words[0])) <= seq if text else True:
        text = (text + " " + words[len(text.split()) % len(words)]).strip()
        if len(tok.ids(text)) >= seq - 1:
            break
    return text


def bert_base_record(work: Path, seq: int = 128) -> dict:
    """One mpc inference of the BERT-base shape (random weights): costs and memory only."""
    from models.bert_shapes import BERT_BASE_SHAPE

    overrides = SETTINGS["bitdecomp"]
    x = torch.zeros((1, seq, BERT_BASE_SHAPE.input_shape[1]), dtype=torch.float64)
    x[0, torch.arange(seq), torch.arange(seq) * 7 + 1000] = 1.0
    weights = BERT_BASE_SHAPE.load_weights()
    _, plain_s = plaintext_forward(BERT_BASE_SHAPE, weights, x, repeats=3)
    del weights
    extra = sum((["--set", o] for o in overrides), [])
    progress(f"bert-base-shape seq {seq}: mpc (bitdecomp)")
    with Deployment("bert-base-shape", ["mpc"], certs=work / "certs",
                    extra_server_args=extra) as dep:
        _, rec = run_session(dep, "bert-base-shape", "mpc", [x], work,
                             config=Config().with_overrides(overrides))
    rss = dealer_rss(dep)
    if rss is not None:
        rec["parties"]["dealer"]["peak_rss_bytes"] = rss
    rec["params"].update({"seq_len": seq, "config": overrides, "weights": "random (cost only)"})
    return base_record("transformers", **rec, method="bitdecomp", plaintext_seconds=plain_s,
                       net="loopback", threads=1, time_ratio=rec["online"]["seconds"] / plain_s,
                       fidelity={"cosine": None})


def dealer_rss(dep) -> int | None:
    for line in dep.proc("dealer").lines:
        m = re.search(r"peak RSS (\d+) MiB", line)
        if m:
            return int(m.group(1)) * 2 ** 20
    return None


def cost_records(plan: list[tuple[str, list[int]]], weights, work) -> list[dict]:
    """plan: (method, sequence lengths) pairs; plaintext runs beside the first method."""
    tok = Tokenizer()
    out = []
    methods = [m for m, _ in plan]
    for method, seqs in plan:
        overrides = SETTINGS[method]
        cfg = Config().with_overrides(overrides)
        extra = sum((["--set", o] for o in overrides), [])
        for seq in seqs:
            x = tok.one_hot(sentence_of_length(tok, seq), seq)
            ref, plain_s = plaintext_forward(MINILM, weights, x)
            rows = []
            with Deployment("minilm", ["mpc", "plaintext"], certs=work / "certs",
                            extra_server_args=extra) as dep:
                for protocol in ("plaintext", "mpc"):
                    if protocol == "plaintext" and method != methods[0]:
                        continue
                    progress(f"minilm seq {seq}: {protocol}" + (f" ({method})" if protocol == "mpc" else ""))
                    ys, rec = run_session(dep, "minilm", protocol, [x], work, config=cfg)
                    rows.append((protocol, ys[0], rec))
            rss = dealer_rss(dep)
            for protocol, y, rec in rows:
                if rss is not None:
                    rec["parties"]["dealer"]["peak_rss_bytes"] = rss
                rec["params"].update({"seq_len": seq, "config": overrides})
                out.append(base_record(
                    "transformers", **rec, method=method if protocol == "mpc" else "",
                    plaintext_seconds=plain_s, net="loopback", threads=1,
                    time_ratio=rec["online"]["seconds"] / plain_s,
                    fidelity={"cosine": F.cosine_similarity(y, ref).item(),
                              "max_abs_error": (y - ref).abs().max().item()}))
    return out


def fidelity_records(weights, n: int, method: str) -> list[dict]:
    tok = Tokenizer()
    cfg = Config().with_overrides(SETTINGS[method])
    plain, private, cosines = [], [], []
    t0 = time.perf_counter()
    for i, s in enumerate(SENTENCES[:n]):
        x = tok.one_hot(s)
        ref, _ = plaintext_forward(MINILM, weights, x, repeats=1)
        y, _, _ = run_in_process(MINILM, weights, x, cfg, session_id=f"s{i}")
        plain.append(ref[0])
        private.append(y[0])
        cosines.append(F.cosine_similarity(y, ref).item())
        progress(f"fidelity {i + 1}/{n}: bucket {x.shape[1]}, cosine {cosines[-1]:.6f}")
    P, Q = torch.stack(plain), torch.stack(private)
    agree = clear = ties = 0
    for i in range(n):
        sim_p = P @ P[i]
        sim_q = P @ Q[i]
        sim_p[i] = sim_q[i] = -2.0                   # exclude the query itself
        top2 = sim_p.topk(2).values
        if top2[0] - top2[1] > 2 * SIM_BUDGET:
            clear += 1
            agree += int(sim_p.argmax() == sim_q.argmax())
        else:
            ties += 1
    return [base_record("transformers", model="minilm", protocol="mpc", method=method,
                        params={"sentences": n, "buckets": "smallest fitting",
                                "config": SETTINGS[method], "seconds": time.perf_counter() - t0},
                        fidelity={"cosine": min(cosines), "mean_cosine": sum(cosines) / n,
                                  "top1_agree": agree == clear, "top1_agree_count": agree,
                                  "clear_queries": clear, "near_ties": ties,
                                  "similarity_budget": SIM_BUDGET},
                        dealer="in-process-test", threads=1, net="in-process")]


def write_markdown(records, path: Path) -> str:
    costs = [r for r in records if "seq_len" in r.get("params", {})]
    fid = [r for r in records if "sentences" in r.get("params", {})]
    lines = ["# Transformers: all-MiniLM-L6-v2", "",
             f"Machine: {records[0]['machine'].get('cpu')} ({records[0]['machine'].get('cores')} "
             f"cores), git {records[0]['git']}; `python -m benchmarks transformers`. Dealer, "
             "server and client as separate processes with mTLS on loopback, one thread each; "
             "one inference per session. Bytes: payload sent per party (client's view), total: "
             "all parties and both phases, dealer included.", "",
             "| seq | protocol | method | online s | x plaintext | online sent | rounds | offline s "
             "| offline recv (client) | total bytes | client storage | peak RSS client / server / "
             "dealer | cosine |", "|" + "---|" * 13]
    for r in costs:
        on, off, par = r["online"], r["offline"], r["parties"]
        rss = " / ".join(human_bytes(par.get(k, {}).get("peak_rss_bytes", 0) or 0)
                         for k in ("client", "server", "dealer"))
        label = r["params"]["seq_len"] if r["model"] == "minilm" else \
            f"{r['params']['seq_len']} ({r['model']}, random weights)"
        cos = r["fidelity"]["cosine"]
        lines.append(f"| {label} | {r['protocol']} | {r['method']} | "
                     f"{on['seconds']:.2f} | {r['time_ratio']:.0f} | {human_bytes(on['bytes_sent'])} "
                     f"| {on['rounds']:g} | {off['seconds']:.2f} | {human_bytes(off['bytes_received'])} "
                     f"| {human_bytes(r['total_bytes'])} | {human_bytes(r['client_storage_bytes'])} "
                     f"| {rss} | {'-' if cos is None else f'{cos:.6f}'} |")
    for r in fid:
        f = r["fidelity"]
        lines += ["", f"Fidelity ({r['params']['sentences']} sentences, {r['method']}, each at "
                  f"its smallest bucket): min cosine {f['cosine']:.6f}, mean "
                  f"{f['mean_cosine']:.6f}. Semantic search (each sentence as the query against "
                  f"the others): top-1 equal to plaintext on {f['top1_agree_count']} of "
                  f"{f['clear_queries']} queries whose plaintext top-2 gap exceeds "
                  f"{2 * f['similarity_budget']}; near-ties: {f['near_ties']}."]
    from benchmarks.decoding import markdown_lines
    lines += markdown_lines(records)
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks transformers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", default="32,128", help="buckets for the bitdecomp comparisons")
    p.add_argument("--fss-seqs", default="32",
                   help="buckets for FSS comparisons ('' for none; keys grow ~1 GB per 16 tokens)")
    p.add_argument("--sentences", type=int, default=len(SENTENCES))
    p.add_argument("--bert-base", action="store_true",
                   help="also run the BERT-base shape (12 layers, d=768) at 128 tokens")
    p.add_argument("--only-bert-base", action="store_true", help="run just that")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    weights = MINILM.load_weights()
    with tempfile.TemporaryDirectory(prefix="pinfer-tf-") as tmp:
        plan = [("bitdecomp", [int(s) for s in args.seqs.split(",") if s])]
        if args.fss_seqs:
            plan.append(("fss", [int(s) for s in args.fss_seqs.split(",")]))
        records = [] if args.only_bert_base else cost_records(plan, weights, Path(tmp))
        if args.bert_base or args.only_bert_base:
            records.append(bert_base_record(Path(tmp)))
    if args.sentences and not args.only_bert_base:
        records += fidelity_records(weights, args.sentences, "bitdecomp")
    append_records(args.out / "transformers.jsonl", records)
    print(rewrite_markdown(args.out))


def rewrite_markdown(out: Path) -> str:
    """transformers.md from the latest record of each kind in transformers.jsonl."""
    latest: dict = {}
    for r in read_records(out / "transformers.jsonl"):
        key = (r.get("model"), r["params"].get("seq_len"), r["params"].get("context"),
               r.get("protocol"), r.get("method"), "sentences" in r["params"])
        latest[key] = r
    return write_markdown(list(latest.values()), out / "transformers.md")


if __name__ == "__main__":
    main()
