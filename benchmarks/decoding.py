"""Private decoding cost per token (tiny-gpt, mpc), by context length.

    python -m benchmarks decoding [--contexts 128,512,1008] [--new-tokens 5] [--settings fss]
                                  [--fidelity 20]

A private prefill costs quadratically in the prompt (about 89 MiB online and 552 MiB of
comparison keys at 112 tokens, so tens of GB at 1,000), while a decode step's cost depends
only on the cache length. So the per-token figures come from decode steps run against a
cache filled by a **benchmark-only shortcut** ("cache fill"): the client's shares of each
layer's K/V rows are the plaintext values (computed here, where the weights are local; a
real client never has them), the server's are zero, and the rows are opened under their
shared-only masks exactly as a private prefill would (``ops.cache_append``). Every decode
step after that is the real protocol: same code, same material, same meters. At the
shortest context the whole private run (prefill included) also goes through real
processes, as a cross-check that its per-step bytes and rounds equal the shortcut's.
Plaintext per-token seconds: the same decode step on plain float32 tensors, same thread
count. Records: ``benchmarks/results/transformers.jsonl`` (model ``tiny-gpt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import append_records, base_record
from models.decoding import decode_steps, plain_decode, prompt_rows, step_rows
from models.gpt import KVCache, forward
from models.kv_eviction import make_policy
from models.tiny_gpt import TINY_GPT, TinyGptDecoder
from models.train_tiny_gpt import CFG, make_task
from mpc import fixed
from mpc.ops import PlanOps
from protocols.config import Config
from protocols.ops import TorchOps

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"fss": [], "bitdecomp": ["compare.method=bitdecomp", "compare.bits=32"]}


def plain_cache(weights, prompt, bucket, kv=None, static_fill=False, cfg=CFG):
    """Plaintext K/V (float64) of a right-aligned prompt after its prefill (the policy's
    importance observed) and the first token; with ``static_fill`` also the policy's
    static step (H2O's compacted rows), to be shared instead of run privately."""
    ops = TorchOps(weights, exact=True)
    toks, pos, _ = prompt_rows(prompt, bucket, cfg)
    cache = KVCache(cfg, make_policy(kv), prompt_len=bucket)
    chunk = TINY_GPT.decoder.chunk
    for start in range(0, bucket, chunk):
        m = min(chunk, bucket - start)
        logits = forward(ops, toks[:, start:start + m], pos[:, start:start + m], cache, cfg=cfg)
    if static_fill:
        cache.finish_prefill(ops)
    return cache, int(logits[0, -1].argmax())


@dataclasses.dataclass(frozen=True)
class CacheFillDecoder(TinyGptDecoder):
    """Benchmark only: the prefill replaced by sharing a plaintext cache (see above); the
    policy's static step and every decode step then run privately."""

    fill: object = None            # (KVCache of floats, first token): the client's side

    def run(self, ops, x, new_tokens, *, emit, feed, observe=None, on_token=None,
            eviction=None):
        plain, first = self.fill
        cache = KVCache(self.cfg, make_policy(eviction), prompt_len=plain.length)

        def value(t):
            if isinstance(ops, PlanOps):
                return PlanOps.tensor(t.shape)
            if ops.party.index == 0:
                return fixed.encode(t, ops.f)
            return torch.zeros(t.shape, dtype=torch.int64)

        with ops.scope("prefill"):
            for i in range(self.cfg.layers):
                cache.k[i], cache.v[i] = ops.cache_append(
                    [(f"l{i}.k", None, value(plain.k[i]), 2), (f"l{i}.v", None, value(plain.v[i]), 2)])
            cache.valid, cache.length = value(plain.valid), plain.length
            cache.importance = {i: value(t) for i, t in plain.importance.items()}
            if plain.prefilled:                  # static state shared, not computed here
                cache.prompt_len, cache.prefilled = plain.prompt_len, True
                for i, (k, v, valid) in plain.static.items():
                    key = f"l{i}.{cache.policy.name}.static"
                    cache.static[i] = tuple(ops.cache_append(
                        [(f"{key}.k", None, value(k), 2), (f"{key}.v", None, value(v), 2)])) \
                        + (value(valid),)
            else:
                cache.finish_prefill(ops)
        out = [first if not isinstance(ops, PlanOps) and ops.party.index == 0 else None]
        if on_token is not None:
            on_token(0)
        return decode_steps(ops, cache, out, new_tokens, cfg=self.cfg, emit=emit, feed=feed,
                            observe=observe, on_token=on_token)


def _sum(meter, phase, match) -> dict:
    """Both directions' payload and the rounds of the scopes ``match`` accepts."""
    sent = received = 0
    rounds: set = set()
    for scope, c in meter.scopes(phase).items():
        if match(scope):
            sent, received = sent + c.payload_sent, received + c.payload_received
            rounds |= c.rounds
    return {"bytes": sent + received, "sent": sent, "received": received, "rounds": len(rounds)}


def private_steps(weights, prompt, bucket, new_tokens, config, session_id, static_fill=False,
                  spec=TINY_GPT):
    """mpc decode steps after a cache fill, in-process: (tokens, per-step figures).
    Everything is read from the meters: online traffic of the decode steps (and of their
    selection and gathers), the dealer material that serves them (metered per item
    scope), and the one-time static step at the end of the prefill. ``spec``: a decoder
    spec of this family (default: the trained tiny-gpt)."""
    from benchmarks.in_process import run_in_process
    cfg = spec.decoder.cfg
    x = spec.decoder.encode_prompt(prompt, bucket)
    spec = dataclasses.replace(spec, decoder=CacheFillDecoder(
        cfg, fill=plain_cache(weights, prompt, bucket, config.kv, static_fill, cfg)))
    roles = {}
    t0 = time.perf_counter()
    y, cm, sm = run_in_process(spec, weights, x, config, session_id=session_id,
                               new_tokens=new_tokens, roles=roles)
    wall = time.perf_counter() - t0
    marks = roles["client"].token_marks
    gaps = [b - a for a, b in zip(marks[1:], marks[2:])]
    steps = new_tokens - 1
    on = _sum(cm, "online", lambda sc: sc.startswith("decode"))
    select = _sum(cm, "online", lambda sc: sc.startswith("decode") and (
        ".evict.select" in sc or ".evict.gather" in sc))
    dealer = [_sum(m, "offline", lambda sc: sc.startswith("dealer.decode")) for m in (cm, sm)]
    static_on = _sum(cm, "online", lambda sc: sc.startswith("prefill.static"))
    static_off = [_sum(m, "offline", lambda sc: sc.startswith("dealer.prefill.static"))
                  for m in (cm, sm)]
    return y[0].tolist(), {
        "seconds": statistics.median(gaps), "seconds_all": gaps,
        "bytes": on["bytes"] / steps, "bytes_sent_per_party": on["sent"] / steps,
        "rounds": on["rounds"] / steps,
        "selection_bytes": select["bytes"] / steps, "selection_rounds": select["rounds"] / steps,
        "offline_bytes": sum(d["received"] for d in dealer) / steps,
        "client_storage_bytes": dealer[0]["received"] / steps,
        "static_online_bytes": static_on["bytes"], "static_rounds": static_on["rounds"],
        "static_offline_bytes": sum(d["received"] for d in static_off),
        "wall_seconds": wall}


def plain_step_seconds(weights, prompt, bucket, repeats=20) -> float:
    """Median seconds of one float32 decode step at this cache length (same thread count)."""
    ops = TorchOps(weights, dtype=torch.float32, exact=True)
    toks, pos, n = prompt_rows(prompt, bucket, CFG, torch.float32)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            cache = KVCache(CFG)
            forward(ops, toks, pos, cache, cfg=CFG)
            t, p = (r.float() for r in step_rows(5, n, CFG))
            t0 = time.perf_counter()
            forward(ops, t, p, cache, cfg=CFG)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def retrieval_prompt(bucket: int, seed: int):
    toks, answers, _ = make_task(1, bucket, torch.Generator().manual_seed(seed))
    return toks[0].tolist(), int(answers[0, 0])


def decode_record(weights, bucket, new_tokens, setting, seed=0) -> dict:
    prompt, answer = retrieval_prompt(bucket, seed)
    config = Config().with_overrides(SETTINGS[setting])
    tokens, fig = private_steps(weights, prompt, bucket, new_tokens, config, f"dec{bucket}{setting}")
    want, margins = plain_decode(weights, prompt, new_tokens, bucket, cfg=CFG)
    plain_s = plain_step_seconds(weights, prompt, bucket)
    return base_record(
        "transformers", model="tiny-gpt", protocol="mpc", method=f"decode/{setting}",
        net="in-process", threads=torch.get_num_threads(),
        params={"context": bucket, "new_tokens": new_tokens, "prefill": "cache-fill (benchmark "
                "shortcut; decode steps fully private)", "compare": setting,
                "config_overrides": SETTINGS[setting]},
        online={"seconds": fig["seconds"], "bytes_both_directions": fig["bytes"],
                "bytes_sent": fig["bytes_sent_per_party"], "rounds": fig["rounds"],
                "spread": [min(fig["seconds_all"]), max(fig["seconds_all"])]},
        offline={"bytes_received": fig["offline_bytes"]},
        client_storage_bytes=fig["client_storage_bytes"],
        total_bytes=fig["bytes"] + fig["offline_bytes"],
        plaintext_seconds=plain_s, ratio=fig["seconds"] / plain_s,
        fidelity={"top1_agree": sum(a == b for a, b in zip(tokens, want)) / len(want),
                  "tokens": tokens, "plaintext_tokens": want, "answer": answer,
                  "min_margin": min(margins)},
        dealer="in-process-test", per="decode step (cache length = context + step)")


def fidelity_record(weights, samples: int, bucket: int, new_tokens: int) -> dict:
    """Fully private generations (prefill included, in-process): tokens against plaintext
    greedy wherever the plaintext margin exceeds twice the logit error budget."""
    from benchmarks.in_process import run_in_process
    from models.tiny_gpt import LOGIT_ERROR_BUDGET
    gen = torch.Generator().manual_seed(1234)
    toks, answers, _ = make_task(samples, bucket - 4, gen)
    clear = agree = near = answered = 0
    for i in range(samples):
        prompt = toks[i].tolist()
        x = TINY_GPT.decoder.encode_prompt(prompt, bucket)
        y, _, _ = run_in_process(TINY_GPT, weights, x, session_id=f"fid{i}", new_tokens=new_tokens)
        got = y[0].tolist()
        want, margins = plain_decode(weights, prompt, new_tokens, bucket, cfg=CFG)
        answered += got[0] == int(answers[i, 0])
        for t in range(new_tokens):
            if got[:t] != want[:t]:
                break
            if margins[t] > 2 * LOGIT_ERROR_BUDGET:
                clear += 1
                agree += got[t] == want[t]
            else:
                near += 1
        print(f"[decoding] fidelity {i + 1}/{samples}: {got} vs {want}", flush=True)
    return base_record(
        "transformers", model="tiny-gpt", protocol="mpc", method="decode-fidelity",
        net="in-process", threads=torch.get_num_threads(), dealer="in-process-test",
        params={"context": bucket, "new_tokens": new_tokens, "samples": samples,
                "prefill": "private"},
        fidelity={"top1_agree": agree / max(1, clear), "clear_steps": clear,
                  "near_ties": near, "error_budget": LOGIT_ERROR_BUDGET,
                  "retrieval_accuracy": answered / samples})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks decoding", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="128,512,1008")
    ap.add_argument("--new-tokens", type=int, default=5)
    ap.add_argument("--settings", default="fss,bitdecomp")
    ap.add_argument("--fidelity", type=int, default=0, metavar="N",
                    help="also N fully private generations (bucket 32) checked against plaintext")
    ap.add_argument("--out", type=Path, default=RESULTS / "transformers.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    weights = TINY_GPT.load_weights()
    recs = []
    for setting in args.settings.split(","):
        for bucket in map(int, args.contexts.split(",")):
            print(f"[decoding] {setting} context {bucket} ...", flush=True)
            rec = decode_record(weights, bucket, args.new_tokens, setting)
            o = rec["online"]
            print(f"[decoding]   {o['seconds']:.3f} s/token, {o['bytes_both_directions'] / 2**20:.2f} "
                  f"MiB, {o['rounds']:.0f} rounds; plaintext {rec['plaintext_seconds'] * 1e3:.2f} ms; "
                  f"tokens {rec['fidelity']['tokens']} vs {rec['fidelity']['plaintext_tokens']}",
                  flush=True)
            recs.append(rec)
    if args.fidelity:
        rec = fidelity_record(weights, args.fidelity, 32, 4)
        print(f"[decoding] fidelity: {rec['fidelity']}", flush=True)
        recs.append(rec)
    append_records(args.out, recs)
    print(f"[decoding] {len(recs)} records appended to {args.out}")
    if args.out.parent == RESULTS:
        from benchmarks.transformers import rewrite_markdown
        rewrite_markdown(RESULTS)


def markdown_lines(records) -> list[str]:
    """The decoding section of transformers.md."""
    from benchmarks.records import human_bytes
    steps = sorted((r for r in records if r.get("model") == "tiny-gpt"
                    and str(r.get("method", "")).startswith("decode/")),
                   key=lambda r: (r["method"], r["params"]["context"]))
    fid = [r for r in records if r.get("model") == "tiny-gpt" and r.get("method") == "decode-fidelity"]
    if not steps and not fid:
        return []
    lines = ["", "## Private decoding (tiny-gpt, mpc)", "",
             "`python -m benchmarks decoding`: cost of one decode step (cache length = context "
             "+ step), medians over the steps of one generation, one thread per party, "
             "in-process parties over metered in-memory channels (the same protocol code and "
             "frames as gRPC; per-step bytes and rounds cross-checked equal to a run between "
             "real processes). The prefill is a benchmark-only cache fill (client shares = "
             "plaintext K/V, rows opened under their masks as a private prefill would); every "
             "decode step is the real protocol. Bytes: both directions. Offline: dealer "
             "material per step, both parties. Client storage: the session's peak (masked "
             "weights and material) over its decode steps.", "",
             "| context | comparisons | online s / token | x plaintext | bytes / token | rounds "
             "/ token | offline / token | client storage / token | tokens = plaintext |",
             "|" + "---|" * 9]
    for r in steps:
        on = r["online"]
        lines.append(f"| {r['params']['context']} | {r['params']['compare']} | "
                     f"{on['seconds']:.3f} | {r['ratio']:.0f} | "
                     f"{human_bytes(on['bytes_both_directions'])} | {on['rounds']:g} | "
                     f"{human_bytes(r['offline']['bytes_received'])} | "
                     f"{human_bytes(r['client_storage_bytes'])} | "
                     f"{r['fidelity']['top1_agree']:.0%} |")
    for r in records:
        if r.get("model") == "tiny-gpt" and r.get("method") == "decode-processes/fss":
            d = r["decode"]
            lines += ["", f"Between real processes (dealer, server, client; mTLS on loopback; "
                      f"fully private, prefill included; `python -m client --model tiny-gpt "
                      f"--retrieval {r['params']['context']} --max-new-tokens "
                      f"{r['params']['new_tokens']}`): prefill of {r['params']['context']} "
                      f"tokens {d['prefill']['seconds']:.2f} s, "
                      f"{human_bytes(d['prefill']['bytes'])}, {d['prefill']['rounds']:g} rounds; "
                      f"per decode step {d['decode']['seconds']:.3f} s, "
                      f"{human_bytes(d['decode']['bytes'])}, {d['decode']['rounds']:g} rounds "
                      f"(bytes and rounds equal to the in-process row); offline "
                      f"{human_bytes(r['offline']['bytes_received'])} to the client, total "
                      f"{human_bytes(r['total_bytes'])}."]
    for r in fid:
        f = r["fidelity"]
        lines += ["", f"Fidelity, fully private (prefill included, bucket "
                  f"{r['params']['context']}, {r['params']['new_tokens']} tokens, "
                  f"{r['params']['samples']} retrieval prompts): {f['clear_steps']} steps whose "
                  f"plaintext logit margin exceeds {2 * f['error_budget']}: tokens equal to "
                  f"plaintext greedy on {f['top1_agree']:.0%}; near-ties: {f['near_ties']}; "
                  f"retrieval answers right: {f['retrieval_accuracy']:.0%}."]
    return lines
