"""Equivariant encryption: the host's speed, exactness, the client's and owner's costs.

    python -m benchmarks ee [--runs 20] [--seqs 32,128]

For MiniLM (sentence embeddings, at each ``--seqs`` bucket) and tiny-gpt (a 64-token
prompt and 8 generated tokens), one thread:
  * host: the ``plaintext`` family's fast path (``FastOps``: float32, one-hot lookups) on
    the transformed weights and inputs against the same path on the original model; medians
    of ``--runs`` interleaved runs (the order alternates every run) and their ratio;
  * exactness: max abs error of the decrypted output against float64 plaintext, on every
    benchmark sentence (MiniLM) or 20 retrieval prompts (tiny-gpt, logits and tokens);
  * client: encrypt (permute the one-hot rows) and decrypt, medians;
  * owner: key generation and the weight transform, once per deployment.
Records: ``benchmarks/results/ee.jsonl`` (``protocol`` = ``ee`` and ``plaintext`` on the
same model); table ``ee.md`` (with the attack figures of ``python -m benchmarks
ee-attacks``). EE is obfuscation, not cryptography: every table says so.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import append_records, base_record, read_records
from models.equivariant import EeKey, transform_weights
from models.registry import get_model
from protocols.config import Config
from protocols.families.equivariant import encrypt_input
from protocols.families.plaintext import FastOps, run_fast
from protocols.ops import TorchOps

RESULTS = Path(__file__).resolve().parent / "results"
WARNING = ("EE is obfuscation, not cryptography: a host that knows the public base weights "
           "recovers the key (attack figures below).")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _interleaved(fa, fb, runs):
    """Medians of ``runs`` timings of each, alternating which goes first."""
    ta, tb = [], []
    for i in range(runs):
        order = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for fn, acc in order:
            acc.append(_timed(fn)[0])
    return statistics.median(ta), statistics.median(tb), ta, tb


def _client_costs(spec, key, x, y, runs):
    enc = statistics.median(_timed(lambda: encrypt_input(spec, key, x))[0] for _ in range(runs))
    if spec.decoder is None:
        dec = statistics.median(_timed(lambda: key.decrypt_features(y))[0] for _ in range(runs))
    else:
        dec = statistics.median(_timed(lambda: [key.decrypt_token(int(t)) for t in y])[0]
                                for _ in range(runs))
    return {"encrypt_seconds": enc, "decrypt_seconds": dec}


def _owner_costs(spec, w):
    times = []
    for _ in range(3):
        tk, key = _timed(lambda: EeKey.generate(spec))
        tt, w2 = _timed(lambda: transform_weights(spec, w, key))
        times.append((tk, tt))
    return key, w2, {"keygen_seconds": statistics.median(t[0] for t in times),
                     "transform_seconds": statistics.median(t[1] for t in times)}


def _records(model, params, plain_s, ee_s, spreads, fid, client, owner):
    common = dict(model=model, threads=1, net="none", dealer="none", params=params)
    ratio = ee_s / plain_s
    return [base_record("ee", protocol="plaintext", online={"seconds": plain_s,
                                                            "spread": spreads[0]}, **common),
            base_record("ee", protocol="ee", online={"seconds": ee_s, "spread": spreads[1]},
                        time_ratio=ratio, fidelity=fid, client=client, owner=owner, **common)]


def minilm_records(seqs, runs) -> list[dict]:
    import torch.nn.functional as F

    from benchmarks.sentences import SENTENCES
    from benchmarks.transformers import sentence_of_length
    from models.minilm import Tokenizer
    spec = get_model("minilm")
    w = spec.load_weights()
    key, w2, owner = _owner_costs(spec, w)
    plain, host = FastOps(w, device="cpu"), FastOps(w2, device="cpu")
    tok = Tokenizer()
    errs, cos = [], []
    with torch.no_grad():
        for s in SENTENCES:
            x = tok.one_hot(s)
            ref = spec.forward(TorchOps(w, exact=True), x)
            y = key.decrypt_features(run_fast(spec, host, encrypt_input(spec, key, x)))
            errs.append(float((y - ref).abs().max()))
            cos.append(float(F.cosine_similarity(y, ref)))
    fid = {"max_abs_error": max(errs), "cosine": min(cos), "samples": len(SENTENCES)}
    out = []
    for seq in seqs:
        x = tok.one_hot(sentence_of_length(tok, seq), seq)
        xe = encrypt_input(spec, key, x)
        with torch.no_grad():
            p_s, e_s, ta, tb = _interleaved(lambda: run_fast(spec, plain, x),
                                            lambda: run_fast(spec, host, xe), runs)
            y = run_fast(spec, host, xe)
        print(f"[ee] minilm seq {seq}: plaintext {p_s * 1e3:.1f} ms, ee host {e_s * 1e3:.1f} ms "
              f"(x{e_s / p_s:.3f})", flush=True)
        out += _records("minilm", {"seq_len": seq, "runs": runs}, p_s, e_s,
                        ([min(ta), max(ta)], [min(tb), max(tb)]), fid,
                        _client_costs(spec, key, x, y, runs), owner)
    return out


def tiny_gpt_records(runs, prompt_len=60, new_tokens=8) -> list[dict]:
    from models.train_tiny_gpt import make_task
    spec = get_model("tiny-gpt")
    dec = spec.decoder
    w = spec.load_weights()
    key, w2, owner = _owner_costs(spec, w)
    plain, host = FastOps(w, device="cpu"), FastOps(w2, device="cpu")

    def generate(ops, x):                  # the plaintext family's decoding loop
        x = ops.input(x)
        length = dec.prompt_length(x)
        with torch.inference_mode():
            return dec.run(ops, x, new_tokens, eviction=Config().kv,
                           emit=lambda onehot: int(torch.argmax(onehot.reshape(-1))),
                           feed=lambda t, prev: tuple(ops.input(r) for r in
                                                      dec.step_input(prev, length + t - 1)))

    toks, _, _ = make_task(20, prompt_len, torch.Generator().manual_seed(11))
    bucket = -(-prompt_len // 16) * 16
    errs, same = [], 0
    with torch.no_grad():
        for ids in toks:
            x = dec.encode_prompt(ids.tolist(), bucket)
            xe = encrypt_input(spec, key, x)
            real = x[0, :, :dec.cfg.vocab].sum(-1) > 0        # padding rows attend to nothing
            errs.append(float((key.decrypt_logits(run_fast(spec, host, xe))
                               - spec.forward(TorchOps(w, exact=True), x))[:, real].abs().max()))
            same += [key.decrypt_token(t) for t in generate(host, xe)] == generate(plain, x)
    fid = {"max_abs_error": max(errs), "tokens_equal": same, "samples": len(toks)}
    x = dec.encode_prompt(toks[0].tolist(), bucket)
    xe = encrypt_input(spec, key, x)
    with torch.no_grad():
        p_s, e_s, ta, tb = _interleaved(lambda: generate(plain, x), lambda: generate(host, xe),
                                        runs)
        y = generate(host, xe)
    print(f"[ee] tiny-gpt prompt {prompt_len}, {new_tokens} tokens: plaintext {p_s * 1e3:.1f} "
          f"ms, ee host {e_s * 1e3:.1f} ms (x{e_s / p_s:.3f})", flush=True)
    return _records("tiny-gpt", {"context": bucket, "new_tokens": new_tokens, "runs": runs},
                    p_s, e_s, ([min(ta), max(ta)], [min(tb), max(tb)]), fid,
                    _client_costs(spec, key, x, y, runs), owner)


def write_markdown(out: Path) -> str:
    speed, attacks = {}, {}
    for r in read_records(out / "ee.jsonl", "ee"):
        speed[(r["model"], r["protocol"], tuple(sorted(r["params"].items())))] = r
    for r in read_records(out / "ee.jsonl", "ee-attack"):
        attacks[(r["model"], r["method"], r["params"].get("deployment_index", 0))] = r
    lines = ["# Equivariant encryption (`ee`)", "", WARNING, ""]
    rows = [r for r in speed.values() if r["protocol"] == "ee"]
    if rows:
        m = rows[0]["machine"]
        lines += [f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {rows[0]['git']}; "
                  "`python -m benchmarks ee`. One thread. Host: the plaintext family's fast path "
                  "(float32, one-hot lookups) on the transformed weights and inputs; plaintext: "
                  "the same path on the original model; medians of interleaved runs; errors "
                  "against the float64 forward.", "",
                  "| model | input | plaintext s | ee host s | ratio | runs | max abs error "
                  "(decrypted) | client encrypt | client decrypt | owner keygen | owner "
                  "transform |", "|" + "---|" * 11]
        for r in rows:
            p = r["params"]
            base = speed.get((r["model"], "plaintext", tuple(sorted(p.items()))))
            label = f"seq {p['seq_len']}" if "seq_len" in p else \
                f"prompt {p['context']}, {p['new_tokens']} new tokens"
            lines.append(f"| {r['model']} | {label} | {base['online']['seconds']:.4f} | "
                         f"{r['online']['seconds']:.4f} | {r['time_ratio']:.3f} | {p['runs']} | "
                         f"{r['fidelity']['max_abs_error']:.1e} | "
                         f"{r['client']['encrypt_seconds'] * 1e3:.2f} ms | "
                         f"{r['client']['decrypt_seconds'] * 1e3:.3f} ms | "
                         f"{r['owner']['keygen_seconds']:.3f} s | "
                         f"{r['owner']['transform_seconds']:.3f} s |")
    if attacks:
        lines += ["", "## Attacks from the host's position (`python -m benchmarks ee-attacks`)", "",
                  "| model | attack | deployment | recovery rate | what is recovered | "
                  "needs |", "|---|---|---|---|---|---|"]
        for (_, _, k), r in sorted(attacks.items(), key=lambda kv: kv[0]):
            lines.append(f"| {r['model']} | {r['method']} | {k} | "
                         f"{r['fidelity']['recovery_rate']:.4f} | {r['params']['recovers']} | "
                         f"{r['params']['needs']} |")
    text = "\n".join(lines) + "\n"
    (out / "ee.md").write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks ee", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seqs", default="32,128")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = minilm_records([int(s) for s in args.seqs.split(",")], args.runs)
    recs += tiny_gpt_records(args.runs)
    append_records(args.out / "ee.jsonl", recs)
    print(write_markdown(args.out))
