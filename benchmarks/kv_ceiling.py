"""How much faster any KV-cache eviction can make a private decode step: the ceiling.

    python -m benchmarks kv-ceiling [--repeats 3] [--new-tokens 8] [--quick]

A decode step under mpc costs the context-independent work (LayerNorm, projections, GeLU,
the head, the argmax: a fixed number of dependent rounds) plus attention over the cache
(q.K, the softmax and p.V over every cached row). Eviction can only shrink the second
part. The **floor** is a step that attends to 2 prompt rows (StreamingLLM with one sink and
one recent row: no selection cost, almost no attention); no policy that keeps any rows
can be cheaper. The ceiling of every eviction policy at a context is then

    ceiling = full-cache seconds per step / floor seconds per step,

an upper bound measured on this engine, whatever the policy, its selection or its budget.

Shapes: the trained ``tiny-gpt`` at 256, 512 and 1024 tokens (its positions end at 1024),
and decoders of the same family with seeded random weights (cost only: every mpc step is
data-oblivious, so its bytes and rounds do not depend on the weights, and neither does
its time beyond noise) to see how the ceiling moves with the context (tiny-gpt's width at
2048 and 4096 tokens) and with the width (GPT-2-small's d = 768, 12 heads, at 1024).
Everything in-process (``benchmarks.decoding.private_steps``), one thread per party,
fss comparisons; runs interleaved, each figure the median over runs of each run's median
step. Records: ``benchmarks/results/kv_ceiling.jsonl``; table ``kv_ceiling.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from pathlib import Path

import torch

from benchmarks.decoding import private_steps, retrieval_prompt
from benchmarks.kv_quality import TAIL
from benchmarks.records import append_records, base_record, human_bytes, read_records
from models.gpt import gpt_params
from models.tiny_gpt import TINY_GPT, TinyGptDecoder
from models.train_tiny_gpt import CFG
from protocols.config import Config

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = ["kv.method=streamingllm", "kv.budget=2", "kv.sinks=1"]
# (label, d, heads, contexts, trained weights?)
SHAPES = [("tiny-gpt", 64, 4, (256, 512, 1024), True),
          ("tiny-gpt width, random weights", 64, 4, (2048, 4096), False),
          ("GPT-2-small width, random weights", 768, 12, (1024,), False)]
QUICK = [("tiny-gpt", 64, 4, (256,), True)]


def shape_spec(d: int, heads: int, ctx: int, seed: int = 0):
    """(spec, weights) of a 2-layer decoder of tiny-gpt's family: d, heads, ffn = 4d and
    ``ctx`` positions, weights drawn from a seeded generator (public; cost runs only)."""
    cfg = dataclasses.replace(CFG, d=d, heads=heads, ffn=4 * d, ctx=ctx)
    params = gpt_params(cfg)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in params.items():
        if len(shape) > 1:
            weights[name] = 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:      # LayerNorm gains 1, every bias 0
            one = name.endswith("weight") and (".ln" in name or name.startswith("ln"))
            weights[name] = torch.full(shape, 1.0 if one else 0.0, dtype=torch.float64)
    spec = dataclasses.replace(TINY_GPT, name=f"gpt-d{d}-h{heads}-ctx{ctx}", params=params,
                               input_shape=(ctx - TAIL, cfg.vocab + ctx),
                               seq_buckets=(ctx - TAIL,), decoder=TinyGptDecoder(cfg),
                               weights_file=Path("/nonexistent"))
    return spec, weights


@functools.lru_cache(maxsize=1)
def _trained_weights():
    """tiny-gpt's weights, read once for all its contexts."""
    return TINY_GPT.load_weights()


def measure(label, d, heads, ctx, trained, new_tokens, repeats) -> list[dict]:
    """Full cache and floor at one shape and context, ``repeats`` interleaved runs each."""
    if trained:
        spec, weights = TINY_GPT, _trained_weights()
    else:
        spec, weights = shape_spec(d, heads, ctx)
    bucket = ctx - TAIL
    prompt, _ = retrieval_prompt(bucket, seed=ctx)
    runs: dict = {"full": [], "floor": []}
    for rep in range(repeats):
        for which, extra in (("full", ["kv.method=full"]), ("floor", FLOOR)):
            cfg = Config().with_overrides(extra)
            t0 = time.perf_counter()
            _, fig = private_steps(weights, prompt, bucket, new_tokens, cfg,
                                   f"ceil{ctx}{d}{which}{rep}", spec=spec)
            runs[which].append(fig)
            print(f"[kv-ceiling] {label} ctx {ctx} {which} run {rep + 1}: "
                  f"{fig['seconds']:.3f} s/step, {fig['rounds']:.0f} rounds "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    recs = []
    for which, figs in runs.items():
        if len({f["bytes"] for f in figs}) != 1:
            raise RuntimeError(f"{label} {ctx} {which}: bytes varied between runs")
        f = figs[0]
        secs = [g["seconds"] for g in figs]
        recs.append(base_record(
            "kv_ceiling", model=spec.name if not trained else "tiny-gpt", protocol="mpc",
            method="full" if which == "full" else "streamingllm",
            params={"context": ctx, "prompt": bucket, "new_tokens": new_tokens,
                    "repeats": repeats, "d": d, "heads": heads, "layers": CFG.layers,
                    "weights": "trained" if trained else "seeded random (cost only)",
                    "shape": label, "role": which,
                    **({} if which == "full" else {"budget": 2, "sinks": 1})},
            online={"seconds": statistics.median(secs), "spread": [min(secs), max(secs)],
                    "bytes_both_directions": f["bytes"], "rounds": f["rounds"]},
            offline={"bytes_received": f["offline_bytes"]},
            attention_elements=CFG.layers * heads * (ctx - TAIL),
            per="decode step", threads=torch.get_num_threads(), net="in-process",
            dealer="in-process-test"))
    return recs


def write_markdown(records, path: Path) -> str:
    m = records[0]["machine"]
    lines = ["# The ceiling of KV-cache eviction on this engine", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {records[0]['git']}; "
             "`python -m benchmarks kv-ceiling`. Floor: a decode step that attends to 2 "
             "prompt rows (StreamingLLM, 1 sink + 1 recent row) and the generated rows. "
             "Ceiling = full / floor: no eviction policy can make a step faster than this, "
             "whatever its selection costs. In-process parties, one thread each, fss "
             "comparisons; medians over runs of each run's median step.", "",
             "Per round: the floor's seconds over its rounds. Per attention element (one "
             "softmax entry of one head and layer): the seconds full adds to the floor over "
             "the elements it adds. 2x from: the context at which the full step would reach "
             "twice the floor, extrapolating its attention cost linearly in the context.", "",
             "| shape | context | full s / step | full rounds | full bytes / step | floor s / "
             "step | floor rounds | floor bytes / step | attention share of a full step | "
             "ceiling | per round | per attention element | 2x from |", "|" + "---|" * 13]
    pairs: dict = {}
    for r in records:
        pairs.setdefault((r["params"]["shape"], r["params"]["context"]), {})[
            r["params"]["role"]] = r
    for (shape, ctx), p in pairs.items():
        if set(p) != {"full", "floor"}:
            continue
        fo, lo = p["full"]["online"], p["floor"]["online"]
        attn = fo["seconds"] - lo["seconds"]
        extra = p["full"]["attention_elements"] - p["floor"]["params"]["layers"] * \
            p["floor"]["params"]["heads"] * 2
        per_round = lo["seconds"] / lo["rounds"]
        two_x = f"{ctx * lo['seconds'] / attn:,.0f}" if attn > 0 else "-"
        lines.append(f"| {shape} | {ctx} | {fo['seconds']:.3f} | {fo['rounds']:.0f} | "
                     f"{human_bytes(fo['bytes_both_directions'])} | {lo['seconds']:.3f} | "
                     f"{lo['rounds']:.0f} | {human_bytes(lo['bytes_both_directions'])} | "
                     f"{100 * attn / fo['seconds']:.0f}% | {fo['seconds'] / lo['seconds']:.2f}x | "
                     f"{1e3 * per_round:.2f} ms | {1e6 * attn / extra:.2f} us | {two_x} |")
    lines += ["", "A 2x faster step needs attention over the cache to be at least half of a "
              "full-cache step, before any selection cost. The context-independent work is "
              "a fixed chain of dependent rounds, and on this engine one round costs as much "
              "as hundreds of attention elements; the cache's attention reaches half a step "
              "only at the contexts in the last column."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks kv-ceiling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny-gpt at 256 tokens only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = []
    for label, d, heads, contexts, trained in (QUICK if args.quick else SHAPES):
        for ctx in contexts:
            recs += measure(label, d, heads, ctx, trained, args.new_tokens, args.repeats)
    append_records(args.out / "kv_ceiling.jsonl", recs)
    latest = {(r["params"]["shape"], r["params"]["context"], r["params"]["role"]): r
              for r in read_records(args.out / "kv_ceiling.jsonl")}
    print(write_markdown(list(latest.values()), args.out / "kv_ceiling.md"))


if __name__ == "__main__":
    main()
