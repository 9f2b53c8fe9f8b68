"""Reliability and security, every class counted: ``python -m benchmarks reliability``.

    python -m benchmarks reliability [--fuzz 10000] [--grpc 300] [--inputs 500]
                                     [--clients 8] [--sessions 100] [--only CLASS,...]

Runs each class against real processes where it can and writes
``benchmarks/results/reliability.md`` (a table: class, case, how many cases, and the
outcome counts: crashes, hangs, reused preprocessing, wrong results) and
``reliability.jsonl`` (the rows). Classes:
  frames   ``reliability_frames``: fuzzed frames in-process, malformed streams over gRPC,
           replayed and other-session frames, bytes corrupted in flight (insecure, mTLS)
  faults   ``reliability_faults``: SIGKILL / SIGSTOP of client, server or dealer at each
           protocol step, detection within 5 s, material burned, server still serving
  inputs   ``reliability_inputs``: bad user input through the client API and the command
           line, mTLS refusals between every pair of processes
  load     ``reliability_load``: concurrent clients against one server, results checked
  source   pickle-based loading in the product code (the layering test's scan)
The CI suite runs a slice of each (tests/integration/test_bad_frames.py, test_faults.py,
test_bad_user_input.py, test_mtls_pairs.py, test_load.py, tests/test_secrets.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.records import git_commit, machine_info

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("crashes", "hangs", "reused_preprocessing", "wrong_results")
CLASSES = ("frames", "faults", "inputs", "load", "source")


def source_rows() -> list[dict]:
    """The layering test's AST scan (pickle-family imports, torch.load without
    weights_only=True, np.load with allow_pickle) over the product code."""
    from tests.test_layering import product_files, unsafe_loading
    found = unsafe_loading(REPO)
    files = len(list(product_files(REPO)))
    return [{"class": "source scan", "case": f"pickle-based loading in {files} product files "
             f"({len(found)} found)", "cases": files, "crashes": len(found), "hangs": 0,
             "reused_preprocessing": 0, "wrong_results": 0}]


def collect(args, progress=print) -> list[dict]:
    rows: list[dict] = []
    only = set(args.only.split(",")) if args.only else set(CLASSES)
    if "source" in only:
        rows += source_rows()
    if "frames" in only:
        from benchmarks import reliability_frames as frames
        progress(f"frames: {args.fuzz} in-process")
        rows += frames.fuzz_in_process(args.fuzz)["rows"]
        progress(f"frames: {args.grpc} malformed streams over gRPC")
        rows += frames.fuzz_over_grpc(args.grpc)["rows"]
        progress("frames: replayed and other-session frames")
        rows += frames.replay_over_grpc()["rows"]
        for insecure in (True, False):
            progress(f"frames: corrupted in flight ({'insecure' if insecure else 'mTLS'})")
            rows += frames.corrupt_through_proxy(insecure=insecure)["rows"]
    if "faults" in only:
        from benchmarks import reliability_faults
        progress("faults: kill and freeze each process at each step")
        rows += reliability_faults.run(progress=progress)
    if "inputs" in only:
        from benchmarks import reliability_inputs
        progress("inputs: bad user input, command line, mTLS")
        rows += reliability_inputs.run(args.inputs, progress=progress)
    if "load" in only:
        from benchmarks import reliability_load
        progress(f"load: {args.clients} clients, {args.sessions} sessions")
        rows += reliability_load.rows(reliability_load.run(args.clients, args.sessions,
                                                           progress=progress))
    return rows


def table(rows: list[dict]) -> list[str]:
    out = ["| class | case | cases | crashes | hangs | reused preprocessing | wrong results |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        case = r["case"] + (f" (reported in {r['detect_s']:.2f} s)" if "detect_s" in r else "")
        out.append(f"| {r['class']} | {case} | {r['cases']} | " +
                   " | ".join(str(r.get(c, 0)) for c in COLUMNS) + " |")
    tot = {c: sum(r.get(c, 0) for r in rows) for c in COLUMNS}
    out.append(f"| **total** | {len(rows)} kinds | {sum(r['cases'] for r in rows)} | " +
               " | ".join(str(tot[c]) for c in COLUMNS) + " |")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks reliability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz", type=int, default=10_000, help="in-process fuzzed frames")
    ap.add_argument("--grpc", type=int, default=300, help="malformed streams over gRPC")
    ap.add_argument("--inputs", type=int, default=500, help="bad inputs through the client API")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(CLASSES)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = collect(args)
    m = machine_info()
    command = "python -m benchmarks reliability " + " ".join(argv or [])
    text = ["# Reliability and security: faults, bad input and misuse", "",
            f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {git_commit()}; "
            f"`{command.strip()}` ({time.time() - t0:.0f} s). Outcome columns count cases "
            "that crashed (an unhandled exception, a traceback, a process that died when it "
            "should have survived, or a bad case accepted), hung (no clear error within the "
            "class's bound: 5 s for faults), reused preprocessing (material of a failed "
            "session left behind or consumed again) and gave a wrong result.", "",
            *table(rows), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.md").write_text("\n".join(text))
    with open(args.out / "reliability.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    print("\n".join(text))
