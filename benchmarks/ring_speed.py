"""Ring (int64, Z_2^64) against float64 speed of the linear building blocks, on one thread.

Every 2PC linear layer over Z_2^64 is a torch int64 matmul or conv2d on uniform ring
elements; this measures what that costs against the float64 plaintext reference on the
same shapes: a BERT-base-sized projection (128 tokens and a single decoding row) and the
digits CNN's two convolutions, for one image and for the whole 360-image test set.

    python -m benchmarks.ring_speed [--repeats N] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.records import append_records, base_record, markdown_table, median_seconds

BENCH = "foundation"
METHODS = ("float64", "int64")
_RING_LOW, _RING_HIGH = -(2**63), 2**63 - 1  # randint's high is exclusive: misses one element


def cases() -> list[dict]:
    """The measured shapes: op, a short label, and params (without repeats/threads)."""
    out = [
        {"op": "matmul", "shape": f"{m}x768 @ 768x768", "params": {"a": [m, 768], "b": [768, 768]}}
        for m in (128, 1)
    ]
    for layer, cin, cout, stride in (("conv1", 1, 8, 1), ("conv2", 8, 16, 2)):
        for batch in (1, 360):
            x, w = [batch, cin, 8, 8], [cout, cin, 3, 3]
            label = f"{layer} ({','.join(map(str, x))})*({','.join(map(str, w))}) p1 s{stride}"
            out.append({"op": "conv2d", "shape": label, "params": {
                "layer": layer, "input": x, "weight": w, "padding": 1, "stride": stride}})
    return out


def _operands(case: dict, method: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    p = case["params"]
    shapes = (p["a"], p["b"]) if case["op"] == "matmul" else (p["input"], p["weight"])
    if method == "int64":
        return tuple(torch.randint(_RING_LOW, _RING_HIGH, s, dtype=torch.int64, generator=gen)
                     for s in shapes)  # type: ignore[return-value]
    return tuple(torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes)  # type: ignore[return-value]


def _kernel(case: dict, a: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor]:
    if case["op"] == "matmul":
        return lambda: torch.matmul(a, b)
    p = case["params"]
    return lambda: F.conv2d(a, b, padding=p["padding"], stride=p["stride"])


def run(repeats: int = 20, seed: int = 0, warmup: int = 2) -> list[dict]:
    """Time every case with float64 and int64 operands on one torch thread; one record each.

    int64 records carry ratio_to_float64 = int64 median / float64 median (same shape).
    """
    gen = torch.Generator().manual_seed(seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    records: list[dict] = []
    try:
        with torch.inference_mode():
            for case in cases():
                medians: dict[str, float] = {}
                for method in METHODS:
                    a, b = _operands(case, method, gen)
                    median, times = median_seconds(_kernel(case, a, b), repeats, warmup=warmup)
                    medians[method] = median
                    rec = base_record(
                        BENCH, op=case["op"], protocol="plaintext", method=method,
                        params={**case["params"], "shape": case["shape"], "repeats": repeats,
                                "warmup": warmup, "threads": 1, "seed": seed},
                        seconds=median, spread=[min(times), max(times)], threads=1, dealer="none",
                    )
                    if method == "int64":
                        rec["ratio_to_float64"] = median / medians["float64"]
                    records.append(rec)
    finally:
        torch.set_num_threads(previous)
    return records


def ratio_table(records: list[dict]) -> str:
    """Markdown: one row per (op, shape) with the float64 and int64 medians and their ratio."""
    rows: dict[tuple[str, str], dict] = {}
    for r in records:
        if r.get("bench") != BENCH or r.get("method") not in METHODS:
            continue
        shape = r.get("params", {}).get("shape", "")
        row = rows.setdefault((r["op"], shape), {"op": r["op"], "shape": shape})
        row[r["method"]] = r["seconds"]
    for row in rows.values():
        if row.get("float64") and row.get("int64") is not None:
            row["ratio"] = row["int64"] / row["float64"]
    return markdown_table(list(rows.values()), [
        ("op", "op"), ("shape", "shape"), ("float64 s", "float64"), ("int64 s", "int64"),
        ("ratio", "ratio")])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ring_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="append the records to this JSONL file")
    args = parser.parse_args(argv)
    records = run(repeats=args.repeats, seed=args.seed)
    if args.out:
        append_records(args.out, records)
    print(f"torch threads: 1, repeats: {args.repeats} (medians; int64 is Z_2^64 arithmetic)")
    print(ratio_table(records))


if __name__ == "__main__":
    main()
