"""Benchmark record helpers and a fast smoke run of the ring-speed comparison."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from benchmarks import records as R
from benchmarks import ring_speed


def test_append_read_round_trip(tmp_path):
    path = tmp_path / "nested" / "dir" / "bench.jsonl"
    first = [R.base_record("foundation", op="matmul", seconds=0.5), R.base_record("nonlinear", op="relu")]
    R.append_records(path, first)
    R.append_records(path, [{"bench": "foundation", "op": "conv2d", "online": {"seconds": 1.0}}])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(isinstance(json.loads(line), dict) for line in lines)
    everything = R.read_records(path)
    assert everything[:2] == json.loads(json.dumps(first))
    assert [r["op"] for r in R.read_records(path, bench="foundation")] == ["matmul", "conv2d"]
    assert R.read_records(path, bench="missing") == []


def test_base_record_fields():
    rec = R.base_record("foundation", op="matmul", seconds=1.25, params={"repeats": 3})
    for key in ("bench", "machine", "git", "version", "timestamp", "op", "seconds", "params"):
        assert key in rec
    assert rec["bench"] == "foundation" and rec["params"] == {"repeats": 3}
    for key in ("cpu", "cores", "memory_gib", "platform", "python", "torch"):
        assert key in rec["machine"]
    assert isinstance(rec["git"], str) and rec["git"]
    assert isinstance(rec["version"], str) and rec["version"]
    assert dt.datetime.fromisoformat(rec["timestamp"]).utcoffset() == dt.timedelta(0)
    json.dumps(rec)  # serialisable as is


def test_git_commit_never_raises(monkeypatch):
    monkeypatch.setattr(R.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    assert R.git_commit() == "unknown"


def test_human_bytes():
    assert R.human_bytes(0) == "0 B"
    assert R.human_bytes(1023) == "1023 B"
    assert R.human_bytes(1536) == "1.5 KiB"
    assert R.human_bytes(9 * 2**30) == "9 GiB"
    assert R.human_bytes(123456789) == "118 MiB"


def test_markdown_table_dotted_keys_and_formatting():
    rows = [
        {"model": "digits-cnn", "online": {"seconds": 0.0123456, "bytes_sent": 2048, "rounds": 7},
         "total_bytes": 3 * 2**20},
        {"model": "minilm", "online": {"seconds": 12.0}},
    ]
    table = R.markdown_table(rows, [("model", "model"), ("online s", "online.seconds"),
                                    ("sent", "online.bytes_sent"), ("rounds", "online.rounds"),
                                    ("total", "total_bytes")])
    lines = table.splitlines()
    assert lines[0] == "| model | online s | sent | rounds | total |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| digits-cnn | 0.0123 | 2 KiB | 7 | 3 MiB |"
    assert lines[3] == "| minilm | 12 |  |  |  |"


def test_median_seconds_counts_calls():
    calls = []
    median, times = R.median_seconds(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(times) == 5
    assert min(times) <= median <= max(times)
    with pytest.raises(ValueError):
        R.median_seconds(lambda: None, repeats=0)


def test_ring_speed_smoke():
    import torch

    threads = torch.get_num_threads()
    recs = ring_speed.run(repeats=1)
    assert torch.get_num_threads() == threads  # restored
    expected = {(c["op"], c["shape"]) for c in ring_speed.cases()}
    assert len(expected) == 6
    got = {(r["op"], r["params"]["shape"], r["method"]): r for r in recs}
    assert len(recs) == len(got) == 12
    for op, shape in expected:
        for method in ("float64", "int64"):
            r = got[(op, shape, method)]
            assert r["bench"] == "foundation" and r["protocol"] == "plaintext"
            assert r["seconds"] > 0 and r["spread"][0] <= r["seconds"] <= r["spread"][1]
            assert r["params"]["threads"] == 1 and r["params"]["repeats"] == 1
        ratio = got[(op, shape, "int64")]["ratio_to_float64"]
        assert ratio > 0
        assert "ratio_to_float64" not in got[(op, shape, "float64")]
    table = ring_speed.ratio_table(recs).splitlines()
    assert table[0] == "| op | shape | float64 s | int64 s | ratio |" and len(table) == 2 + 6


def test_human_bytes_never_prints_an_exponent():
    assert R.human_bytes(1000 * 2**20) == "0.977 GiB"
    assert R.human_bytes(1023.9 * 2**10) == "1 MiB"
