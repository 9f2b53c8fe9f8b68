"""KV-cache eviction for private decoding: quality in plaintext, cost per step under mpc.

    python -m benchmarks kv-eviction [--contexts 256,512,1024] [--samples 1000]
                                     [--skip-quality] [--skip-mpc] [--new-tokens 8]

1. Quality (``benchmarks.kv_quality``): retrieval accuracy of every policy and budget on
   ``--samples`` prompts per context, the query decoded step by step under the policy.
2. Cost under mpc (``benchmarks.decoding.private_steps``: in-process parties, the prefill
   replaced by the declared cache-fill shortcut, every decode step and the policies' static
   steps private; H2O's token-level static selection is shared from plaintext above 256
   tokens, since it takes n^2/2 comparisons): per decode step the online seconds, bytes
   (both directions), rounds, the selection's own bytes and rounds, the dealer material and
   the client's stored material; the one-time static step separately. The prompt is the
   context minus 32 rows (the quality runs decode those 32 rows), so a step's cache
   holds about the context.
Records: ``benchmarks/results/kv_eviction.jsonl``; table ``kv_eviction.md``; plot
``kv_eviction.png``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.decoding import plain_step_seconds, private_steps, retrieval_prompt
from benchmarks.kv_quality import TAIL, accuracy
from benchmarks.records import append_records, base_record, human_bytes, read_records
from models.decoding import plain_decode
from models.kv_eviction import make_policy
from models.tiny_gpt import TINY_GPT
from models.train_tiny_gpt import CFG
from protocols.config import Config

RESULTS = Path(__file__).resolve().parent / "results"
QUALITY = [("full", []), ("streamingllm", ["kv.budget=64"]), ("streamingllm", ["kv.budget=128"]),
           ("h2o", ["kv.budget=64"]), ("h2o", ["kv.budget=128"]),
           ("mpcache", []), ("mpcache", ["kv.budget=96"]), ("mpcache", ["kv.budget=128"]),
           ("mpcache", ["kv.coarse=1"]), ("mpcache", ["kv.score=alpha"]),
           ("mpcache", ["kv.share=2"]), ("mpcache", ["kv.static_budget=256"])]
COSTS = [("full", []), ("streamingllm", ["kv.budget=64"]), ("h2o", ["kv.budget=64"]),
         ("mpcache", [])]


def kv_config(method, extra) -> Config:
    return Config().with_overrides([f"kv.method={method}"] + extra)


def describe(cfg: Config) -> dict:
    kv = cfg.kv
    out = {"method": kv.method}
    if kv.method != "full":
        out["budget"] = kv.budget
    if kv.method == "streamingllm":
        out["sinks"] = kv.sinks
    if kv.method == "h2o":
        out["window"] = kv.window
    if kv.method == "mpcache":
        out.update(cluster=kv.cluster, coarse=kv.coarse, coarse_keep=kv.coarse_keep,
                   score=kv.score, alpha=kv.alpha, static_budget=kv.static_budget,
                   share=kv.share)
    return out


def quality_records(weights, contexts, samples) -> list[dict]:
    recs = []
    for ctx in contexts:
        for method, extra in QUALITY:
            cfg = kv_config(method, extra)
            t0 = time.perf_counter()
            acc = accuracy(weights, ctx, samples, cfg.kv)
            print(f"[kv-eviction] quality ctx {ctx} {method} {extra}: {acc:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            recs.append(base_record(
                "kv_eviction", model="tiny-gpt", protocol="plaintext", method=method,
                params={"context": ctx, "prompt": ctx - TAIL, "decoded": TAIL,
                        "samples": samples, **describe(cfg)},
                fidelity={"accuracy": acc}, threads=torch.get_num_threads(), net="none",
                dealer="none"))
    return recs


def cost_records(weights, contexts, new_tokens, repeats=3) -> list[dict]:
    """Each (context, policy) ``repeats`` times, interleaved, after one warm-up run;
    seconds: the median over runs of each run's median step (bytes never vary)."""
    recs = []
    private_steps(weights, retrieval_prompt(224, 0)[0], 224, 3, kv_config("full", []), "warm")
    runs: dict = {}
    for rep in range(repeats):
        for ctx in contexts:
            bucket = ctx - TAIL
            prompt, _ = retrieval_prompt(bucket, seed=ctx)
            for method, extra in COSTS:
                cfg = kv_config(method, extra)
                fill = method == "h2o" and bucket > 256
                runs.setdefault((ctx, method), []).append(private_steps(
                    weights, prompt, bucket, new_tokens, cfg, f"kv{ctx}{method}{rep}",
                    static_fill=fill))
    for ctx in contexts:
        bucket = ctx - TAIL
        prompt, answer = retrieval_prompt(bucket, seed=ctx)
        plain_s = plain_step_seconds(weights, prompt, bucket)
        for method, extra in COSTS:
            cfg = kv_config(method, extra)
            fill = method == "h2o" and bucket > 256
            t0 = time.perf_counter()
            got = runs[(ctx, method)]
            if len({f["bytes"] for _, f in got}) != 1:
                raise RuntimeError(f"{method} at {ctx}: bytes varied between runs")
            tokens, fig = got[0]
            fig = dict(fig, seconds=statistics.median(f["seconds"] for _, f in got),
                       seconds_all=[f["seconds"] for _, f in got])
            want, margins = plain_decode(weights, prompt, new_tokens, bucket, cfg=CFG,
                                         policy=make_policy(cfg.kv))
            agree = sum(a == b for a, b in zip(tokens, want))
            print(f"[kv-eviction] mpc ctx {ctx} {method}: {fig['seconds']:.3f} s/step, "
                  f"{human_bytes(fig['bytes'])}, {fig['rounds']:.0f} rounds; selection "
                  f"{human_bytes(fig['selection_bytes'])}; tokens {agree}/{len(want)} equal "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            recs.append(base_record(
                "kv_eviction", model="tiny-gpt", protocol="mpc", method=method,
                params={"context": ctx, "prompt": bucket, "new_tokens": new_tokens,
                        "repeats": len(got),
                        "prefill": "cache-fill (benchmark shortcut)",
                        "static": "shared from plaintext" if fill else "private",
                        **describe(cfg)},
                online={"seconds": fig["seconds"], "spread": [min(fig["seconds_all"]),
                                                             max(fig["seconds_all"])],
                        "bytes_both_directions": fig["bytes"],
                        "bytes_sent": fig["bytes_sent_per_party"], "rounds": fig["rounds"],
                        "selection_bytes": fig["selection_bytes"],
                        "selection_rounds": fig["selection_rounds"]},
                offline={"bytes_received": fig["offline_bytes"]},
                static={"online_bytes": fig["static_online_bytes"],
                        "rounds": fig["static_rounds"],
                        "offline_bytes": fig["static_offline_bytes"]},
                client_storage_bytes=fig["client_storage_bytes"],
                total_bytes=fig["bytes"] + fig["offline_bytes"],
                plaintext_seconds=plain_s, per="decode step",
                fidelity={"top1_agree": agree / len(want), "tokens": tokens,
                          "plaintext_tokens": want, "min_margin": min(margins)},
                threads=torch.get_num_threads(), net="in-process", dealer="in-process-test"))
    return recs


def _label(r) -> str:
    p = r["params"]
    if r["method"] == "full":
        return "full"
    extra = []
    if r["method"] == "mpcache":
        d = Config().kv
        for k in ("coarse", "score", "share", "static_budget"):
            if p.get(k) != getattr(d, k):
                extra.append(f"{k}={p.get(k)}")
    return f"{r['method']} {p['budget']}" + (f" ({', '.join(extra)})" if extra else "")


def write_markdown(records, path: Path) -> str:
    qual = [r for r in records if r["protocol"] == "plaintext"]
    cost = [r for r in records if r["protocol"] == "mpc" and r["method"] in
            ("full", "streamingllm", "h2o", "mpcache")]
    fid = [r for r in records if r["method"] == "mpcache-fidelity"]
    ctxs = sorted({r["params"]["context"] for r in qual})
    m = records[0]["machine"]
    lines = ["# KV-cache eviction for private decoding (tiny-gpt)", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {records[0]['git']}; "
             "`python -m benchmarks kv-eviction`. Budgets count the prompt rows a decode "
             "step attends to (generated rows are always kept). Selections stay secret; "
             "nothing is opened but the generated tokens.", "",
             "## Retrieval accuracy in plaintext", "",
             f"{qual[0]['params']['samples'] if qual else 0} prompts per context; the last "
             f"{TAIL} rows (tail of the filler, then the query) decoded step by step under "
             "the policy.", "",
             "| policy | " + " | ".join(str(c) for c in ctxs) + " |",
             "|---|" + "---|" * len(ctxs)]
    seen = {}
    for r in qual:
        seen.setdefault(_label(r), {})[r["params"]["context"]] = r["fidelity"]["accuracy"]
    for label, accs in seen.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * accs[c]:.1f}%" if c in accs else "-" for c in ctxs) + " |")
    if cost:
        lines += ["", "## Cost per decode step under mpc", "",
                  "In-process parties, one thread each, fss comparisons; prefill by the "
                  "benchmark's cache fill, every decode step private. Bytes: both "
                  "directions. Offline: dealer material serving the step (both parties); "
                  "client storage: the client's share of it. Static: the one-time step at "
                  "the end of the prefill. x full: the full cache's figure over this one.", "",
                  "| context | policy | s / step | bytes / step | x full | rounds | selection "
                  "bytes / rounds | offline / step | client storage / step | total / step | "
                  "x full | static (once) | tokens = plaintext policy |",
                  "|" + "---|" * 13]
        full = {r["params"]["context"]: r for r in cost if r["method"] == "full"}
        for r in sorted(cost, key=lambda r: (r["params"]["context"], r["method"] != "full")):
            o, f = r["online"], full.get(r["params"]["context"])
            xb = f["online"]["bytes_both_directions"] / o["bytes_both_directions"] if f else 0
            xt = f["total_bytes"] / r["total_bytes"] if f else 0
            st = r["static"]
            static = "-" if not st["online_bytes"] and not st["offline_bytes"] else \
                f"{human_bytes(st['online_bytes'])} + {human_bytes(st['offline_bytes'])} off"
            if r["params"].get("static") == "shared from plaintext":
                static = "(shared from plaintext)"
            lines.append(
                f"| {r['params']['context']} | {_label(r)} | {o['seconds']:.3f} | "
                f"{human_bytes(o['bytes_both_directions'])} | {xb:.2f} | {o['rounds']:.0f} | "
                f"{human_bytes(o['selection_bytes'])} / {o['selection_rounds']:.0f} | "
                f"{human_bytes(r['offline']['bytes_received'])} | "
                f"{human_bytes(r['client_storage_bytes'])} | {human_bytes(r['total_bytes'])} | "
                f"{xt:.2f} | {static} | {100 * r['fidelity']['top1_agree']:.0f}% |")
    for r in fid:
        f = r["fidelity"]
        lines += ["", f"Private selections (mpcache, {r['params']['samples']} prompts at "
                  f"{r['params']['context']} tokens, {r['params']['new_tokens']} tokens each, "
                  f"per head and layer): {f['selections_equal']} of {f['selections_clear']} "
                  f"selections whose plaintext score margin exceeds {2 * f['score_budget']} "
                  f"equal plaintext's; {f['selection_near_ties']} near-ties, of which "
                  f"{f.get('near_tie_selections_equal', '?')} equal anyway (largest private "
                  f"score error measured: {f.get('max_score_error', float('nan')):.3f}). Tokens: "
                  f"{f['tokens_equal']} of {f['tokens_clear']} clear steps equal; "
                  f"{f['token_near_ties']} near-ties."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(records, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cost = [r for r in records if r["protocol"] == "mpc" and r["method"] != "mpcache-fidelity"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label in sorted({_label(r) for r in cost}):
        rs = sorted((r for r in cost if _label(r) == label), key=lambda r: r["params"]["context"])
        x = [r["params"]["context"] for r in rs]
        axes[0].plot(x, [r["online"]["bytes_both_directions"] / 2**20 for r in rs], "o-", label=label)
        axes[1].plot(x, [r["online"]["seconds"] for r in rs], "o-", label=label)
        axes[2].plot(x, [r["total_bytes"] / 2**20 for r in rs], "o-", label=label)
    for ax, title in zip(axes, ("online MiB per step", "online s per step",
                                "online + offline MiB per step")):
        ax.set_xlabel("context (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rewrite(out: Path) -> str:
    latest: dict = {}
    for r in read_records(out / "kv_eviction.jsonl"):
        latest[(r["protocol"], r["method"], r["params"]["context"], _label(r))] = r
    recs = list(latest.values())
    plot(recs, out / "kv_eviction.png")
    return write_markdown(recs, out / "kv_eviction.md")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks kv-eviction", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,512,1024")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="mpc runs per (context, policy)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-mpc", action="store_true")
    ap.add_argument("--mpc-fidelity", type=int, default=0, metavar="N",
                    help="N private mpcache runs at 512 tokens: selections and tokens against "
                         "plaintext (default 0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    weights = TINY_GPT.load_weights()
    contexts = [int(c) for c in args.contexts.split(",")]
    recs = []
    if not args.skip_quality:
        recs += quality_records(weights, contexts, args.samples)
        append_records(args.out / "kv_eviction.jsonl", recs)
    if not args.skip_mpc:
        costs = cost_records(weights, contexts, args.new_tokens, args.repeats)
        append_records(args.out / "kv_eviction.jsonl", costs)
    if args.mpc_fidelity:
        append_records(args.out / "kv_eviction.jsonl",
                       [mpc_fidelity_record(weights, args.mpc_fidelity)])
    print(rewrite(args.out))


SCORE_BUDGET = 0.25   # |error| of a private cluster score (same scale as the logit budget)


def _gap(scores: torch.Tensor, kept: torch.Tensor, among: torch.Tensor) -> float:
    """Weakest kept score minus the best score dropped from ``among``."""
    rest = among[~torch.isin(among, kept)]
    return float(scores[kept].min() - scores[rest].max()) if len(rest) else float("inf")


def _selection_margin(kept_fine, scores, head, kv) -> float:
    """The plaintext margin of one head's selection, at every level it took."""
    fine = scores[0][0, head]
    if len(scores) == 1:
        return _gap(fine, kept_fine, torch.arange(len(fine)))
    coarse = scores[1][0, head]
    top = coarse.topk(kv.coarse_keep).indices
    kids = (top.unsqueeze(-1) * kv.coarse + torch.arange(kv.coarse)).flatten()
    return min(_gap(coarse, top, torch.arange(len(coarse))), _gap(fine, kept_fine, kids))


def mpc_fidelity_record(weights, samples: int, ctx: int = 512, new_tokens: int = 4) -> dict:
    """``samples`` private runs of mpcache (cache fill, in-process): every selection and
    token against the plaintext policy's. A selection counts where the plaintext margin
    between the last kept and the first dropped cluster exceeds twice SCORE_BUDGET; a token
    where the logit margin exceeds twice the logit budget (later steps only while the
    prefixes agree); the rest are near-ties."""
    from models.kv_eviction import MPCache
    from models.tiny_gpt import LOGIT_ERROR_BUDGET
    from mpc import fixed
    cfg = kv_config("mpcache", [])
    bucket = ctx - TAIL
    seen: dict = {}
    orig_select = MPCache.select

    def select(self, ops, scores, cache):
        out = orig_select(self, ops, scores, cache)
        party = getattr(ops, "party", None)
        if party is not None:
            seen.setdefault(party.index, []).append((out, scores[0]))
        elif ops.name != "plan":
            seen.setdefault("plain", []).append((out, scores))
        return out

    MPCache.select = select
    sel_ok = sel_clear = sel_ties = tok_ok = tok_clear = tok_ties = tie_ok = 0
    score_err = 0.0
    try:
        for i in range(samples):
            seen.clear()
            prompt, _ = retrieval_prompt(bucket, seed=10_000 + i)
            tokens, _ = private_steps(weights, prompt, bucket, new_tokens, cfg, f"fid{i}")
            want, margins = plain_decode(weights, prompt, new_tokens, bucket, cfg=CFG,
                                         policy=make_policy(cfg.kv))
            per_step = len(seen["plain"]) // (new_tokens - 1)
            for n, ((s0, f0), (s1, f1), (plain, scores)) in enumerate(
                    zip(seen[0], seen[1], seen["plain"])):
                step = 1 + n // per_step           # decode step t sees tokens[:t]
                if tokens[:step] != want[:step]:
                    break                          # a near-tie token changed the query
                secret = (s0 + s1).to(torch.float64)
                score_err = max(score_err, float((fixed.decode(f0 + f1, 16) - scores[0]).abs().max()))
                for head in range(plain.shape[1]):
                    margin = _selection_margin(plain[0, head].argmax(-1), scores, head, cfg.kv)
                    same = torch.equal(secret[0, head], plain[0, head])
                    if margin > 2 * SCORE_BUDGET:
                        sel_clear += 1
                        sel_ok += same
                    else:
                        sel_ties += 1
                        tie_ok += same
            for t in range(1, new_tokens):
                if tokens[:t] != want[:t]:
                    break
                if margins[t] > 2 * LOGIT_ERROR_BUDGET:
                    tok_clear += 1
                    tok_ok += tokens[t] == want[t]
                else:
                    tok_ties += 1
            print(f"[kv-eviction] mpc fidelity {i + 1}/{samples}: selections {sel_ok}/"
                  f"{sel_clear} (+{sel_ties} near-ties), tokens {tok_ok}/{tok_clear}", flush=True)
    finally:
        MPCache.select = orig_select
    return base_record(
        "kv_eviction", model="tiny-gpt", protocol="mpc", method="mpcache-fidelity",
        params={"context": ctx, "prompt": bucket, "samples": samples, "new_tokens": new_tokens,
                **describe(cfg)},
        fidelity={"selections_equal": sel_ok, "selections_clear": sel_clear,
                  "selection_near_ties": sel_ties, "near_tie_selections_equal": tie_ok,
                  "max_score_error": score_err, "tokens_equal": tok_ok,
                  "tokens_clear": tok_clear, "token_near_ties": tok_ties,
                  "score_budget": SCORE_BUDGET, "logit_budget": LOGIT_ERROR_BUDGET},
        threads=torch.get_num_threads(), net="in-process", dealer="in-process-test")
