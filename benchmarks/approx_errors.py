"""Error table of every approximation on its declared domain, and probes outside it.

    python -m benchmarks.approx_errors [--out DIR] [--samples N]

Seeded samples in float64 (``TorchOps``) and under ``mpc`` (parties and dealer on threads over
in-memory channels: same protocol code and meters as over gRPC), both against the exact torch
function. Writes ``approximations.md``, appends to ``nonlinear.jsonl`` (results folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections import namedtuple
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from approximations import activations as act, core, normalization as nm
from benchmarks.in_process import run_in_process
from benchmarks.records import append_records, base_record, markdown_table
from models.spec import ModelSpec
from protocols.config import Config
from protocols.ops import TorchOps

RESULTS = Path(__file__).resolve().parent / "results"
FRAC, SCOPE, D = Config().fixed.frac_bits, "approx", torch.float64     # 16 fractional bits


Case = namedtuple("Case", "op method domain params fn ref sample rel", defaults=(False,))


def _uni(lo, hi, log=False):    # sampler: uniform (or log-uniform) in [lo, hi)
    if log:
        return lambda g, n: torch.exp(_uni(math.log(lo), math.log(hi))(g, n))
    return lambda g, n: lo + (hi - lo) * torch.rand(n, generator=g, dtype=D)


def _rows(width, scale):        # sampler: rows of randn * scale (scale: a float or a sampler)
    def draw(g, n):
        rows = -(-n // width)
        return torch.randn(rows, width, generator=g, dtype=D) * (
            scale(g, rows)[:, None] if callable(scale) else scale)
    return draw


_exp, _sigm, _tanh = (partial(f, frac_bits=FRAC) for f in (core.exp_neg, core.sigmoid, core.tanh))
_gelu_t, _sm = partial(act.gelu_tanh, frac_bits=FRAC), partial(nm.softmax, frac_bits=FRAC)
_softmax, _ln = partial(torch.softmax, dim=-1), nm.layernorm
_ln_ref = partial(F.layer_norm, normalized_shape=(64,), eps=nm.LayerNormParams().eps)
QUAD = nm.Softmax2QuadParams(reciprocal=core.ReciprocalParams(lo=-4, hi=15, iterations=3))
RECIP, RSQRT, SIG = core.ReciprocalParams(), core.RsqrtParams(), core.SigmoidParams()
PUMA, R10, LOG10 = act.GeluPumaParams(), "x in [2^-10, 2^10)", _uni(2 ** -10, 2 ** 10, True)
CASES = [
    Case("exp", "puma-2nd-order", "x in [-16, 0]", core.ExpParams(), _exp, torch.exp, _uni(-16, 0)),
    Case("reciprocal", "newton", R10, RECIP, core.reciprocal, torch.reciprocal, LOG10, True),
    Case("rsqrt", "newton", R10, RSQRT, core.rsqrt, torch.rsqrt, LOG10, True),
    Case("rsqrt", "newton", "LN variances [0.004, 130]", RSQRT, core.rsqrt, torch.rsqrt,
         _uni(0.004, 130, True), True),
    Case("sigmoid", "exp+newton", "x in [-10, 10]", SIG, _sigm, torch.sigmoid, _uni(-10, 10)),
    Case("tanh", "2sigmoid(2x)-1", "x in [-10, 10]", SIG, _tanh, torch.tanh, _uni(-10, 10)),
    Case("gelu", "puma", "x in [-25, 25]", PUMA, act.gelu_puma, F.gelu, _uni(-25, 25)),
    Case("gelu", "puma", "x in [-5, 5] (max near 3-)", PUMA, act.gelu_puma, F.gelu, _uni(-5, 5)),
    Case("gelu", "quad", "x in [-25, 25]", act.GeluQuadParams(), act.gelu_quad, F.gelu,
         _uni(-25, 25)),
    Case("gelu", "tanh", "x in [-25, 25]", act.GeluTanhParams(), _gelu_t, F.gelu, _uni(-25, 25)),
    Case("silu", "piecewise", "x in [-12, 12]", act.SiluParams(), act.silu, F.silu, _uni(-12, 12)),
    Case("softmax", "puma", "rows randn*2, 16 wide", nm.SoftmaxParams(), _sm, _softmax,
         _rows(16, 2)),
    Case("softmax", "puma", "rows randn*8, 16 wide", nm.SoftmaxParams(), _sm, _softmax,
         _rows(16, 8)),
    Case("softmax", "2quad (hi=15)", "rows randn*2, 16 wide", QUAD,
         partial(nm.softmax_2quad, p=QUAD), _softmax, _rows(16, 2)),
    Case("layernorm", "rsqrt-newton", "rows randn*s, s in [0.06, 11], 64 wide",
         nm.LayerNormParams(), _ln, _ln_ref, _rows(64, _uni(0.06, 11, True))),
]
# Points outside each domain (op, where, fn, exact, points), one element each
OUTSIDE = [
    ("exp", "below floor; x > 0", _exp, torch.exp, [-12.0, -20.0, -1000.0, 1.0, 5.0, 10.0]),
    ("reciprocal", "x < 2^-10; x >= 2^10", core.reciprocal, torch.reciprocal,
     [2.0 ** -14, 2.0 ** -12, 2.0 ** -11, 1400.0, 1500.0, 2.0 ** 11, 2.0 ** 12]),
    ("rsqrt", "x < 2^-10; x >= 2^10", core.rsqrt, torch.rsqrt,
     [0.0, 2.0 ** -14, 2.0 ** -12, 2.0 ** 11, 2250.0, 2.0 ** 12, 2.0 ** 14]),
    ("sigmoid", "|x| > 10", _sigm, torch.sigmoid, [-1000.0, -30.0, 30.0, 1000.0]),
    ("tanh", "|x| > 10", _tanh, torch.tanh, [-1000.0, -30.0, 30.0, 1000.0]),
    ("gelu puma", "|x| > 25", act.gelu_puma, F.gelu, [-1000.0, -25.0, 25.0, 1000.0]),
    ("gelu tanh", "|x| > 25", _gelu_t, F.gelu, [-1000.0, -100.0, -25.0, 25.0, 1000.0]),
    ("silu", "|x| > 12", act.silu, F.silu, [-1000.0, -25.0, 25.0, 1000.0]),
]
# Whole rows (op, what, fn, exact, (shape, s)): randn * s
OUTSIDE_ROWS = [
    ("softmax", "1 row of 4096 zeros (sum 2^12)", _sm, _softmax, ((1, 4096), 0)),
    ("softmax", "1 row of 8192 zeros (sum 2^13)", _sm, _softmax, ((1, 8192), 0)),
    ("softmax", "4 rows randn*100, 16 wide", _sm, _softmax, ((4, 16), 100)),
    ("layernorm", "rows randn*0.01 (var ~1e-4 < 2^-10)", _ln, _ln_ref, ((4, 64), 0.01)),
    ("layernorm", "rows randn*40 (var 1270 .. 1975)", _ln, _ln_ref, ((4, 64), 40)),
    ("layernorm", "rows randn*60 (var 2850 .. 4440)", _ln, _ln_ref, ((4, 64), 60)),
    ("layernorm", "rows of zeros (var 0)", _ln, _ln_ref, ((4, 64), 0)),
]

HEADER = f"""\
Generated by `python -m benchmarks.approx_errors` ({{s:.0f}} s). Errors against the exact torch
function of the float input; `f64`: the approximation in float64 (`TorchOps`); `mpc`: two parties,
{FRAC} fractional bits, default compare config; `mpc - f64`: the fixed-point part alone. Rounds and
payload bytes sent per input element: online, inside the function only (no output reveal). Under
mpc, 1/x is only 64 ulps at both ends of [2^-10, 2^10) (input or output): ~1% relative there.

Inside the domains, `mpc - f64` of gelu puma / silu (0.004 / 0.0024 at |x| ~ 3-4) is the 16-bit
encoding of small coefficients (0.0018067 x^6 -> 118 / 2^16, -0.34%, times 729). softmax: clipped
entries keep exp(floor) ~ 1 ulp each (PUMA zeroes them), so long rows lose mass: max abs error
~0.45e-3 sqrt(width) in float64 (0.0047 at 128 wide, 0.008 at 384)."""
OUTSIDE_NOTES = """\
* **exp**: below the floor -16 ln 2 = -11.09 it is exp(floor), 2 ulps at most (never garbage);
  x > 0 (outside x <= 0, not clipped) comes out 2% low at 5, 12% low at 10.
* **reciprocal** (hi = 10): below 2^lo low but positive (-4% at 2^-12, -47% at 2^-14); from
  2^hi the scale stays 2^-hi: -10% at 1400, negative from ~1.457 * 2^hi = 1492 (Newton starts
  below 0), garbage of either sign from 2^12. The docstring states the domain, not this.
* **rsqrt** (hi = 10): below 2^lo low but positive (-17% at 2^-14, rsqrt(0) = 139.6); -30% at
  2048, -96% at 2250, garbage from 2^12. **LayerNorm** inherits it: errors ~0.4 for variances
  below 2^-10 and ~0.45 up to ~2000, garbage above ~2260; zero rows give exactly 0.
* **softmax**: any spread is fine, but the row sum must stay below ~1.457 * 2^12 (reciprocal
  hi = 12): 8192 equal entries give garbage. Its docstring ("any finite input") omits this.
* **sigmoid / tanh** saturate to 0 / 1 (-1 / 1) within 2 (4) ulps at |x| = 30 and 1000.
  **gelu puma, silu** are exactly 0 left of the first breakpoint and x right of the last.
* **gelu tanh** is not 0 far left (1 + tanh floors at ~2 ulps): ~-2^-15 |x|, -0.0005 at -25,
  -0.02 at -1000, though its docstring says "Domain: all x".
* **softmax 2quad** default params (reciprocal hi = 16) fail at 16 fractional bits:
  normalize adds the constant -2^15, not encodable (|c| < 2^(31-16)). The table uses hi = 15.
"""


def run_mpc(fn, x: torch.Tensor, config: Config | None = None):
    """fn(ops, x) under mpc: the output, client's and server's online Counters in its scope."""
    def forward(ops, v):
        with ops.scope(SCOPE):
            return fn(ops, v)

    spec = ModelSpec("approx", tuple(x.shape[1:]), {}, forward, Path("/nonexistent"))
    y, cm, sm = run_in_process(spec, {}, x, config, session_id="approx")
    return y, cm.total("online", SCOPE), sm.total("online", SCOPE)


def errors_of(y, exact, rel: bool) -> dict:
    err = (y - exact).abs()
    rel = {"max_rel_error": (err / exact.abs()).max().item()} if rel else {}
    return {"max_abs_error": err.max().item(), "mean_abs_error": err.mean().item(), **rel}


def measure(case: Case, samples: int, seed: int) -> list[dict]:
    x = case.sample(torch.Generator().manual_seed(seed), samples)
    exact, plain = case.ref(x), case.fn(TorchOps({}), x)
    t0 = time.perf_counter()
    y, cc, sc = run_mpc(case.fn, x)
    n, secs = x.numel(), time.perf_counter() - t0
    common = dict(op=case.op, method=case.method, dealer="in-process-test",
                  threads=torch.get_num_threads(),
                  params={"domain": case.domain, "samples": n, "seed": seed, "frac_bits": FRAC,
                          "shape": list(x.shape), "approx": dataclasses.asdict(case.params)})
    online = {"rounds": len(cc.rounds), "bytes_sent": cc.payload_sent, "seconds": secs,
              "bytes_received": cc.payload_received, "bytes_sent_per_element": cc.payload_sent / n,
              "server_bytes_sent_per_element": sc.payload_sent / n}
    fid = dict(errors_of(y, exact, case.rel),
               max_abs_error_vs_float64=(y - plain).abs().max().item())
    return [base_record("nonlinear", protocol="plaintext", online={"rounds": 0, "bytes_sent": 0},
                        fidelity=errors_of(plain, exact, case.rel), **common),
            base_record("nonlinear", protocol="mpc", fidelity=fid, online=online,
                        config_digest=Config().digest(), **common)]


def outside(seed: int = 0) -> tuple[list[dict], list[dict]]:
    points, rows = [], []
    for op, where, fn, ref, x in OUTSIDE + OUTSIDE_ROWS:
        x = torch.tensor(x, dtype=D) if isinstance(x, list) else \
            torch.randn(x[0], generator=torch.Generator().manual_seed(seed), dtype=D) * x[1]
        exact, plain, (y, _, _) = ref(x), fn(TorchOps({}), x), run_mpc(fn, x)
        if x.dim() == 1:
            points += [{"op": op, "where": where, "x": f"{p:.4g}", "exact": f"{exact[i]:.4g}",
                        "f64": f"{plain[i]:.4g}", "mpc": f"{y[i]:.4g}"} for i, p in enumerate(x)]
        else:
            rows.append({"op": op, "what": where, "f64": (plain - exact).abs().max().item(),
                         "mpc": (y - exact).abs().max().item()})
    return points, rows


def write_markdown(records: list[dict], points, rows, path: Path, seconds: float) -> None:
    table = [dict(m, f=p["fidelity"], approx=", ".join(f"{k}={v}" for k, v in
                                                       m["params"]["approx"].items()))
             for p, m in zip(records[::2], records[1::2])]     # (plaintext, mpc) pairs
    cols = [("function", "op"), ("method", "method"), ("domain", "params.domain"),
            ("params", "approx"), ("n", "params.samples"), ("f64 max abs", "f.max_abs_error"),
            ("f64 mean abs", "f.mean_abs_error"), ("f64 max rel", "f.max_rel_error"),
            ("mpc max abs", "fidelity.max_abs_error"),
            ("mpc mean abs", "fidelity.mean_abs_error"), ("mpc max rel", "fidelity.max_rel_error"),
            ("mpc - f64 max", "fidelity.max_abs_error_vs_float64"), ("rounds", "online.rounds"),
            ("client B/elem", "online.bytes_sent_per_element"),
            ("server B/elem", "online.server_bytes_sent_per_element")]
    text = ["# Approximation errors on the declared domains", "", HEADER.format(s=seconds), "",
            markdown_table(table, cols), "", "## Outside the domains", "", OUTSIDE_NOTES,
            markdown_table(points, [("function", "op"), ("outside", "where"), ("x", "x"),
                                    ("exact", "exact"), ("float64 approx", "f64"), ("mpc", "mpc")]),
            "", markdown_table(rows, [("function", "op"), ("input", "what"), ("f64 max abs error",
                                      "f64"), ("mpc max abs error", "mpc")]), ""]
    path.write_text("\n".join(text), encoding="utf-8")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.approx_errors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--samples", type=int, default=2000, help="elements per function")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    records = [r for case in CASES for r in measure(case, args.samples, args.seed)]
    points, rows = outside(args.seed)
    append_records(args.out / "nonlinear.jsonl", records)           # creates args.out
    write_markdown(records, points, rows, args.out / "approximations.md", time.perf_counter() - t0)
    print(f"wrote approximations.md, {len(records)} records ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
