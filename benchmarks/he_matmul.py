"""One encrypted vector times a plaintext matrix: TenSEAL's ``enc.matmul`` against our
baby-step giant-step product (``he.matvec``), same parameter set, one thread.

    python -m benchmarks he-matmul [--sizes 768x768] [--repeats 3] [--bfv-tokens 32]

Parameter set n8192-d2 (N = 8192, primes [60, 40, 40, 60], scale 2^40) for both. Seconds
are medians of ``--repeats`` products; the diagonal encoding (once per weight matrix,
offline) and the Galois keys (once per session, from the client) are reported apart.
Records: ``benchmarks/results/he.jsonl`` (``op`` = ``matmul``); table ``he.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tenseal as ts

from benchmarks.records import append_records, base_record, human_bytes
from he.keys import ClientKeys, ServerKeys
from he.matvec import (EncodedMatrix, decrypt_vector, default_baby, encrypt_vector, matvec,
                       max_tokens, rotation_steps)
from he.params import get_param_set

RESULTS = Path(__file__).resolve().parent / "results"
PARAMS = "n8192-d2"
BFV_PARAMS = "bfv-n8192-t48"


def _median_seconds(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def tenseal_record(w, x, repeats) -> dict:
    ps = get_param_set(PARAMS)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, ps.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(ps.coeff_mod_bit_sizes), n_threads=1)
    ctx.global_scale = ps.scale
    ctx.generate_galois_keys()
    enc = ts.ckks_vector(ctx, x.tolist())
    wt = w.T.tolist()                    # TenSEAL computes x @ M
    secs, times, out = _median_seconds(lambda: enc.matmul(wt), repeats)
    err = float(np.abs(np.array(out.decrypt()) - w @ x).max())
    return _record("tenseal-matmul", w.shape, secs, times, err, {
        "galois_key_bytes": len(ctx.serialize(save_public_key=False, save_secret_key=False,
                                              save_galois_keys=True, save_relin_keys=False))})


def bsgs_record(w, x, repeats, packed: bool = False) -> dict:
    """Our product; ``packed``: as many tokens as fit one ciphertext (x repeated per
    token here: the cost does not depend on the values)."""
    ps = get_param_set(PARAMS)
    m, n = w.shape
    d = max(m, n)
    b = default_baby(d)
    tokens = max_tokens(d, b, ps.slots) if packed else 1
    xs = np.tile(x, (tokens, 1))
    t0 = time.perf_counter()
    ck = ClientKeys.generate(ps, rotation_steps(d, b))
    keygen = time.perf_counter() - t0
    bundle = ck.public_bundle()
    sk = ServerKeys.from_bundle(bundle, (PARAMS,))
    t0 = time.perf_counter()
    mat = EncodedMatrix.encode(w, ps, sk.context, b, tokens=tokens)
    encode = time.perf_counter() - t0
    ct = encrypt_vector(ck, xs, d, b)
    secs, times, out = _median_seconds(lambda: matvec(sk, ct, mat), repeats)
    err = float(np.abs(decrypt_vector(ck, out, m, d, b, tokens) - xs @ w.T).max())
    return _record("bsgs-packed" if packed else "bsgs", w.shape, secs, times, err, {
        "tokens": tokens, "seconds_per_token": secs / tokens,
        "baby_steps": b, "rotations": (b - 1) + (-(-d // b) - 1), "encode_seconds": encode,
        "keygen_seconds": keygen, "galois_key_bytes": len(bundle["galois_keys"])})


def bfv_record(w, x, repeats, tokens: int = 1) -> dict:
    """The ``hybrid`` offline product (``he.coeff_matmul``, BFV t = 2^48): exact integers
    (weights and inputs in fixed point, f = 16); seconds = products plus the masking,
    re-randomising, flooding and prime drop of every reply (``he.bfv``)."""
    import torch

    from he import coeff_matmul as cm
    from he import delphi
    from he.bfv import BfvClientKeys, BfvServerKeys, get_bfv_params
    from mpc import fixed, prg
    ps = get_bfv_params(BFV_PARAMS)
    m, n = w.shape
    t0 = time.perf_counter()
    ck = BfvClientKeys.generate(ps)
    keygen = time.perf_counter() - t0
    bundle = ck.public_bundle()
    sk = BfvServerKeys.from_bundle(bundle, (BFV_PARAMS,))
    geom = cm.choose_geometry(tokens, n, m, ps.poly_modulus_degree)
    w_ring = fixed.encode(torch.from_numpy(w), 16)
    t0 = time.perf_counter()
    layer = delphi.ServerLayer(sk, geom, w_ring, None, "bench")
    encode = time.perf_counter() - t0
    r = delphi.client_mask(prg.new_seed(), 0, (tokens, n))
    cts = delphi.client_inputs(ck, geom, r)
    secs, times, (replies, s_share) = _median_seconds(
        lambda: delphi.server_replies(sk, layer, cts), repeats)
    got = delphi.client_shares(ck, geom, replies) + s_share
    err = float((got - ((r @ w_ring.t()) << 16)).abs().max())      # exact: 0
    return _record("bfv-coeff" if tokens == 1 else "bfv-coeff-packed", w.shape, secs, times, err, {
        "tokens": tokens, "seconds_per_token": secs / tokens, "encode_seconds": encode,
        "keygen_seconds": keygen, "galois_key_bytes": 0, "public_key_bytes":
        len(bundle["public_key"]), "ciphertexts_in": geom.inputs,
        "ciphertexts_out": geom.outputs, "block": [geom.t_b, geom.n_b, geom.m_b]},
        param_set=BFV_PARAMS, protocol="hybrid")


def _record(method, shape, secs, times, err, extra, param_set=PARAMS, protocol="he") -> dict:
    return base_record("he", op="matmul", method=method, protocol=protocol, threads=1,
                       params={"shape": list(shape), "param_set": param_set, **extra},
                       online={"seconds": secs, "spread": [min(times), max(times)]},
                       fidelity={"max_abs_error": err}, net="none", dealer="none")


def write_markdown(records) -> str:
    """The matmul table (``benchmarks.he_models.rewrite_markdown`` writes he.md)."""
    m = records[0]["machine"]
    lines = ["# HE building blocks", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {records[0]['git']}; "
             "`python -m benchmarks he-matmul`. One thread. CKKS rows (bsgs, tenseal-matmul): "
             "parameter set n8192-d2 (N = 8192, [60, 40, 40, 60], scale 2^40) for both. "
             "bfv-coeff rows: the `hybrid` protocol's offline product, BFV set bfv-n8192-t48 "
             "(N = 8192, t = 2^48, exact integers; seconds include masking, re-randomising, "
             "flooding and the prime drop of every reply; its error is in ring units and is "
             "exactly 0). Key column: Galois keys for CKKS, the public key for BFV.", "",
             "## One encrypted vector times a plaintext matrix", "",
             "| shape | method | tokens | seconds | per token | x TenSEAL (per token) | max abs "
             "error | encode (once per matrix) | Galois keys (once per session) |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {tuple(r["params"]["shape"]): r["online"]["seconds"] for r in records
            if r["method"] == "tenseal-matmul"}
    for r in sorted(records, key=lambda r: (r["params"]["shape"], r["method"])):
        p, s = r["params"], r["online"]["seconds"]
        ref = base.get(tuple(p["shape"]))
        t = p.get("tokens", 1)
        lines.append(f"| {p['shape'][0]}x{p['shape'][1]} | {r['method']} | {t} | {s:.3f} | "
                     f"{s / t:.3f} | {ref / (s / t) if ref else 0:.1f} | "
                     f"{r['fidelity']['max_abs_error']:.1e} | "
                     f"{p.get('encode_seconds', 0):.2f} s | "
                     f"{human_bytes(p['galois_key_bytes'] or p.get('public_key_bytes', 0))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks he-matmul", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="768x768")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bfv-tokens", type=int, default=32, help="tokens of the packed BFV row")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    recs = []
    for size in args.sizes.split(","):
        m, n = (int(v) for v in size.split("x"))
        rng = np.random.default_rng(0)
        w, x = rng.normal(0, 0.05, (m, n)), rng.normal(0, 1, n)
        for fn in (bsgs_record, lambda *a: bsgs_record(*a, packed=True), bfv_record,
                   lambda *a: bfv_record(*a, tokens=args.bfv_tokens), tenseal_record):
            rec = fn(w, x, args.repeats)
            print(f"[he-matmul] {m}x{n} {rec['method']}: {rec['online']['seconds']:.3f} s, "
                  f"error {rec['fidelity']['max_abs_error']:.1e}", flush=True)
            recs.append(rec)
    append_records(args.out / "he.jsonl", recs)
    from benchmarks.he_models import rewrite_markdown
    print(rewrite_markdown(args.out))
