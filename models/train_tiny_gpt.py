"""Train the tiny GPT decoder on long-context key-value retrieval, deterministically.

  python -m models.train_tiny_gpt [--budget-min 25] [--seed 0] [--eval-samples 1000]

The task: a sequence of T tokens, BOS, filler, ``pairs`` key-value pairs (one token each)
at random places (distinct keys), then "QUERY key" for one of them; the answer, predicted
at the last row, is that key's value. The loss is on the answers only (training sequences
end with 4 queries, the last three after the answered ones). Training runs the model's own
``forward`` (models/gpt.py) through TorchOps (float32, exact=True: torch's softmax, GeLU,
LayerNorm) with plain autograd; a length curriculum goes up to 1024. Short sequences sit at
a random offset in the 1024 positions, so every learned position row is trained from the
start (evaluation always starts at position 0). Seeded generator, deterministic
algorithms, 2 threads, a fixed step schedule: the same command writes the same bytes
(unless the wall-clock budget stops it first, which the report says).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from models.gpt import GptConfig, forward, gpt_params
from models.spec import WEIGHTS_DIR, load_safetensors
from protocols.ops import TorchOps

CFG = GptConfig(vocab=128, d=64, layers=2, heads=4, ctx=1024, ffn=256, gelu_form="puma")
BOS, QUERY = 0, 1
N_KEYS, N_VALUES = 8, 12
FILLER, KEYS, VALUES = (2, 12), (12, 12 + N_KEYS), (20, 20 + N_VALUES)   # [lo, hi) ids
PAIR0 = 32                          # pair token (key k, value v): PAIR0 + k * N_VALUES + v
MAX_PAIRS = N_KEYS
# (length, batch, steps): tokens per step roughly constant; most steps short
SCHEDULE = [(64, 64, 4000), (128, 32, 1500), (256, 16, 1000), (512, 8, 600), (1024, 4, 600)]
LR, WARMUP, CLIP = 3e-3, 100, 1.0
QUERIES = 4          # training: loss on 4 answers per sequence; evaluation: 1
PE_SCALE = 0.3
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def make_task(n: int, length: int, gen: torch.Generator, pairs: int | None = None,
              queries: int = 1):
    """n retrieval samples of ``length`` tokens: (tokens (n, length) long, answers
    (n, queries) long, the rows (queries,) that predict them). Each key-value pair is one
    token (PAIR0 + key * N_VALUES + value) at a random place in the filler, keys distinct;
    ``pairs`` per sample (default: uniform in max(2, queries)..MAX_PAIRS). The sequence
    ends with ``queries`` "QUERY key value" triples whose last value is left out (the
    answer; evaluation uses one query)."""
    tail = 3 * queries - 1
    if length < MAX_PAIRS + tail + 2:
        raise ValueError(f"length {length} too short for {MAX_PAIRS} pairs")
    toks = torch.randint(*FILLER, (n, length), generator=gen)
    answers = torch.empty(n, queries, dtype=torch.long)
    avail = length - 1 - tail              # pairs live in positions 1 .. length - tail - 1
    rows = length - tail + 1 + 3 * torch.arange(queries)
    for s in range(n):
        k = pairs or int(torch.randint(max(2, queries), MAX_PAIRS + 1, (), generator=gen))
        where = 1 + torch.randperm(avail, generator=gen)[:k]
        keys = torch.randperm(N_KEYS, generator=gen)[:k]
        vals = torch.randint(0, N_VALUES, (k,), generator=gen)
        toks[s, where] = PAIR0 + keys * N_VALUES + vals
        q = torch.randperm(k, generator=gen)[:queries]
        toks[s, rows - 1], toks[s, rows] = QUERY, KEYS[0] + keys[q]
        answers[s] = VALUES[0] + vals[q]
        toks[s, rows[:-1] + 1] = answers[s, :-1]
    toks[:, 0] = BOS
    return toks, answers, rows


def model_inputs(toks, offsets, cfg=CFG, dtype=torch.float32):
    n, t = toks.shape
    pos = offsets.reshape(-1, 1) + torch.arange(t).reshape(1, -1)
    return F.one_hot(toks, cfg.vocab).to(dtype), F.one_hot(pos, cfg.ctx).to(dtype)


def as_ops(params, dtype=torch.float32):
    """Our parameter names from the trainable tensors (wte tied: input table and head)."""
    w = {k: v for k, v in params.items() if k not in ("wte", "wpe")}
    w.update({"embed.weight": params["wte"].t(), "head.weight": params["wte"],
              "wpe.weight": params["wpe"].t()})
    return TorchOps(w, dtype=dtype, exact=True)


def init_params(gen, cfg=CFG):
    """GPT-2-style init (normal 0.02, residual projections / sqrt(2 layers)); wpe starts
    as scaled sinusoids (still learned) so relative offsets are easy to find."""
    p = {}
    for name, shape in gpt_params(cfg).items():
        if name in ("embed.weight", "head.weight", "wpe.weight"):
            continue
        if name.endswith(".bias"):
            p[name] = torch.zeros(shape)
        elif ".ln" in name or name.startswith("lnf"):
            p[name] = torch.ones(shape)
        else:
            std = 0.02 / math.sqrt(2 * cfg.layers) if name.split(".")[1] in ("o", "ff2") else 0.02
            p[name] = torch.randn(shape, generator=gen) * std
    p["wte"] = torch.randn(cfg.vocab, cfg.d, generator=gen) * 0.1
    pos = torch.arange(cfg.ctx, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, cfg.d, 2) / cfg.d)
    pe = torch.zeros(cfg.ctx, cfg.d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    p["wpe"] = (pe * PE_SCALE).float()
    return {k: v.float().requires_grad_(True) for k, v in p.items()}


def export(params) -> dict[str, torch.Tensor]:
    ops = as_ops({k: v.detach() for k, v in params.items()})
    return {k: v.detach().float().contiguous().clone() for k, v in ops.weights.items()}


@torch.no_grad()
def evaluate(weights, ctx: int, samples: int, seed: int, batch: int = 32,
             pairs: int | None = None, dtype=torch.float32) -> float:
    """Retrieval accuracy (argmax over the whole vocabulary at the last row) on ``samples``
    fresh sequences of ``ctx`` tokens, positions from 0; batched full forward passes."""
    gen = torch.Generator().manual_seed(seed)
    toks, ans, _ = make_task(samples, ctx, gen, pairs)
    ans = ans[:, 0]
    ops = TorchOps(weights, dtype=dtype, exact=True)
    correct = 0
    for i in range(0, samples, batch):
        x, p = model_inputs(toks[i:i + batch], torch.zeros(len(toks[i:i + batch]),
                                                          dtype=torch.long), dtype=dtype)
        logits = forward(ops, x, p, None, cfg=CFG)[:, -1]
        correct += int((logits.argmax(-1) == ans[i:i + batch]).sum())
    return correct / samples


def train(seed: int = 0, budget_s: float = 25 * 60, log=print):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(seed)
    params = init_params(gen)
    opt = torch.optim.AdamW(params.values(), lr=LR, betas=(0.9, 0.98), weight_decay=0.0)
    total = sum(s for _, _, s in SCHEDULE)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / WARMUP) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))))
    t0, step, stopped, phases = time.perf_counter(), 0, False, []
    for length, batch, steps in SCHEDULE:
        tp, run_loss, run_acc = time.perf_counter(), 0.0, 0.0
        for k in range(steps):
            if time.perf_counter() - t0 > budget_s:
                stopped = True
                break
            toks, ans, rows = make_task(batch, length, gen, queries=QUERIES)
            off = torch.randint(0, CFG.ctx - length + 1, (batch,), generator=gen)
            off = torch.where(torch.rand(batch, generator=gen) < 0.25, 0, off)
            x, p = model_inputs(toks, off)
            logits = forward(as_ops(params), x, p, None, cfg=CFG)[:, rows]
            loss = F.cross_entropy(logits.reshape(-1, CFG.vocab), ans.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)
            opt.step()
            sched.step()
            step += 1
            run_loss = 0.95 * run_loss + 0.05 * float(loss.detach()) if k else float(loss.detach())
            run_acc = 0.95 * run_acc + 0.05 * float((logits.argmax(-1) == ans).float().mean())
            if k % 50 == 49 or k == steps - 1:
                log(f"  len {length:5d} step {k + 1:4d}/{steps}  loss {run_loss:.3f}  "
                    f"acc~{run_acc:.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                    f"{time.perf_counter() - t0:7.1f}s")
        phases.append({"length": length, "batch": batch, "steps_planned": steps,
                       "steps_done": k + 1 if not stopped else k,
                       "seconds": round(time.perf_counter() - tp, 1)})
        if stopped:
            log(f"  wall-clock budget ({budget_s:.0f}s) reached at step {step}")
            break
    return export(params), {"steps": step, "seconds": round(time.perf_counter() - t0, 1),
                            "stopped_by_budget": stopped, "phases": phases}


def save_weights(weights, path: Path, meta: dict) -> None:
    blob = save(weights, metadata={k: str(v) for k, v in meta.items()})
    n = int.from_bytes(blob[:8], "little")  # header key order varies run to run: sort it
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"))
    path.write_bytes(blob[:8] + header.encode().ljust(n) + blob[8 + n:])
    load_safetensors(path, gpt_params(CFG))  # refuse a file the loader would reject


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=25.0, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR / "tiny-gpt.safetensors")
    ap.add_argument("--report", type=Path, default=RESULTS / "tiny_gpt_training.md")
    args = ap.parse_args(argv)
    print(f"tiny-gpt: {CFG.layers} layers, d {CFG.d}, {CFG.heads} heads, ffn {CFG.ffn}, "
          f"vocab {CFG.vocab}, ctx {CFG.ctx}; schedule {SCHEDULE}")
    weights, info = train(args.seed, args.budget_min * 60)
    print(f"trained {info['steps']} steps in {info['seconds']}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(weights, args.out, {"model": "tiny-gpt", "seed": args.seed,
                                     "steps": info["steps"], "dtype": "float32"})
    print(f"saved {args.out}")
    acc, te = {}, time.perf_counter()
    for ctx in (128, 256, 512, 1024):
        acc[ctx] = evaluate(weights, ctx, args.eval_samples, seed=10_000 + ctx)
        print(f"  context {ctx:5d}: accuracy {acc[ctx]:.4f} on {args.eval_samples} samples")
    eval_s = time.perf_counter() - te
    n_params = sum(v.numel() for k, v in weights.items() if k != "head.weight")
    lines = [
        "# tiny-gpt: key-value retrieval training", "",
        f"Command: `python -m models.train_tiny_gpt --budget-min {args.budget_min:g} "
        f"--seed {args.seed}` (2 CPU threads, deterministic algorithms).", "",
        f"Model: GPT-2 family (models/gpt.py), {CFG.layers} layers, d {CFG.d}, {CFG.heads} heads, "
        f"ffn {CFG.ffn}, vocab {CFG.vocab}, {CFG.ctx} learned positions, tied head; "
        f"{n_params} parameters (wte counted once).", "",
        f"Task: BOS, filler ({FILLER[1] - FILLER[0]} token ids), 2-{MAX_PAIRS} key-value "
        f"pairs (one token each: {N_KEYS} keys, distinct in a sequence, x {N_VALUES} values) "
        "at random places, then QUERY key; answer = that key's value (chance given the "
        "pairs present: 1/pairs). Training: 4 queries per sequence, loss on the answers "
        "only; short sequences sit at random position offsets. Evaluation: one query, "
        "positions from 0.",
        "",
        f"Training: {info['steps']} steps in {info['seconds']} s"
        f"{' (stopped by the wall-clock budget)' if info['stopped_by_budget'] else ''}; "
        f"AdamW lr {LR}, warmup {WARMUP}, cosine to 10%, clip {CLIP}.", "",
        "| length | batch | steps planned | steps done | seconds |", "|---|---|---|---|---|",
        *[f"| {p['length']} | {p['batch']} | {p['steps_planned']} | {p['steps_done']} | "
          f"{p['seconds']} |" for p in info["phases"]], "",
        f"Plaintext retrieval accuracy (argmax over all {CFG.vocab} tokens at the last row; "
        f"float32 exact path; {args.eval_samples} held-out samples per length, seed 10000 + "
        f"length; evaluation took {eval_s:.0f} s):", "",
        "| context | accuracy |", "|---|---|",
        *[f"| {c} | {a:.4f} |" for c, a in acc.items()], ""]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
