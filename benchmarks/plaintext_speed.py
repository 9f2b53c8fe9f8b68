"""The ``plaintext`` family's fast path against a naive eager float32 run and the float64
reference, same model, same inputs, one thread (CPU; CUDA rows when a GPU is present).

    python -m benchmarks plaintext-speed [--runs 20]

Fast path (``protocols.families.plaintext.FastOps``): float32, inference mode, one-hot
rows against wide tables gathered instead of multiplied. Naive: ``TorchOps`` in float32,
eager, every layer a matmul. Candidates measured beside it: the same in bfloat16
(``fast-bf16``) and, for MiniLM, attention as one fused SDPA call (``fast-sdpa``). Seconds: medians of ``--runs`` interleaved runs; error: max
abs difference to float64 (decoders: real rows only). Records:
``benchmarks/results/plaintext.jsonl``; table ``plaintext.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import append_records, base_record, read_records
from models.registry import get_model
from protocols.families.plaintext import FastOps, SdpaOps, run_fast
from protocols.ops import TorchOps

RESULTS = Path(__file__).resolve().parent / "results"


def cases():
    from benchmarks.transformers import sentence_of_length
    from models.digits import as_model_input, load_split
    from models.minilm import Tokenizer
    _, x, _, _ = load_split()
    tok = Tokenizer()
    gpt = get_model("tiny-gpt")
    yield "digits-cnn", "1 image", as_model_input(get_model("digits-cnn"), x[:1])
    for seq in (32, 128):
        yield "minilm", f"seq {seq}", tok.one_hot(sentence_of_length(tok, seq), seq)
    yield "tiny-gpt", "prompt 64", gpt.decoder.encode_prompt(list(range(1, 60)), 64)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name, label, x, runs, device) -> list[dict]:
    spec = get_model(name)
    w = spec.load_weights()
    ref = spec.forward(TorchOps(w, exact=True), x)
    naive = TorchOps(w, dtype=torch.float32, device=device, exact=True)
    fast = FastOps(w, device=device)
    candidates = {"fast-bf16": FastOps(w, dtype=torch.bfloat16, device=device)}
    if name == "minilm":
        candidates["fast-sdpa"] = SdpaOps(w, device=device)
    paths = {"naive-eager-float32": lambda: run_fast(spec, naive, x),
             "fast": lambda: run_fast(spec, fast, x),
             **{k: (lambda o=o: run_fast(spec, o, x)) for k, o in candidates.items()},
             "float64-reference": lambda: run_fast(spec, TorchOps(w, exact=True), x)}
    times = {k: [] for k in paths}
    for i in range(runs):
        for k in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
            times[k].append(_timed(paths[k]))
    real = slice(None)
    if spec.decoder is not None:
        real = x[0, :, :spec.decoder.cfg.vocab].sum(-1) > 0
    out = []
    base = statistics.median(times["naive-eager-float32"])
    for k, fn in paths.items():
        ops = naive if k.startswith("naive") else candidates.get(k, fast)
        y = run_fast(spec, ops, x) if k != "float64-reference" else ref
        secs = statistics.median(times[k])
        err = float((y[:, real] - ref[:, real]).abs().max()) if spec.decoder else \
            float((y - ref).abs().max())
        out.append(base_record("plaintext-speed", model=name, protocol="plaintext", method=k,
                               params={"input": label, "runs": runs, "device": device},
                               online={"seconds": secs, "spread": [min(times[k]), max(times[k])]},
                               speedup_vs_naive=base / secs, fidelity={"max_abs_error": err},
                               threads=torch.get_num_threads(), net="none", dealer="none"))
        print(f"[plaintext-speed] {name} {label} {device} {k}: {secs * 1e3:.2f} ms "
              f"(x{base / secs:.2f} vs naive), error {err:.1e}", flush=True)
    return out


def write_markdown(out: Path) -> str:
    rows = {}
    for r in read_records(out / "plaintext.jsonl", "plaintext-speed"):
        rows[(r["model"], r["params"]["input"], r["params"]["device"], r["method"])] = r
    m = next(iter(rows.values()))["machine"]
    lines = ["# The plaintext path", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores); `python -m benchmarks "
             "plaintext-speed`; one thread; medians of interleaved runs. `fast` is what the "
             "`plaintext` family serves and what every record's `plaintext_seconds` times.", "",
             "| model | input | device | path | ms | x naive float32 | max abs error vs "
             "float64 |", "|---|---|---|---|---|---|---|"]
    for (model, inp, dev, method), r in rows.items():
        lines.append(f"| {model} | {inp} | {dev} | {method} | {r['online']['seconds'] * 1e3:.2f} "
                     f"| {r['speedup_vs_naive']:.2f} | {r['fidelity']['max_abs_error']:.1e} |")
    text = "\n".join(lines) + "\n"
    (out / "plaintext.md").write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks plaintext-speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    recs = []
    for device in devices:
        for name, label, x in cases():
            recs += measure(name, label, x, args.runs, device)
    append_records(args.out / "plaintext.jsonl", recs)
    print(write_markdown(args.out))
