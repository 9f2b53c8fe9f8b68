"""``python -m benchmarks run`` and ``report`` on a tiny matrix, end to end: real processes,
a shaped link, modelled links, schema-valid records, a table and a plot."""

from __future__ import annotations

import pytest

from benchmarks import harness, report
from benchmarks.launch import WIREPROXY
from benchmarks.records import read_records, validate_session_record


def test_a_tiny_matrix_end_to_end(tmp_path):
    out = tmp_path / "results.jsonl"
    # the shaped link needs ../shared/tools/wireproxy.py beside the checkout
    nets = ["loopback", "model-wan"] + (["proxy-lan"] if WIREPROXY.is_file() else [])
    harness.main(["--models", "digits-mlp", "--protocols", "plaintext,mpc,crypten,ee", "--net",
                  ",".join(nets), "--repeat", "1", "--out", str(out)])
    recs = read_records(out, "summary")
    assert sorted((r["net"], r["protocol"]) for r in recs) == sorted(
        (n, p) for n in nets for p in ("plaintext", "mpc", "crypten"))
    for r in recs:
        validate_session_record(r)
        assert r["fidelity"]["top1_agree"] is True
    by = {(r["net"], r["protocol"]): r for r in recs}
    loop, wan = by[("loopback", "mpc")], by[("model-wan", "mpc")]
    both = loop["online"]["bytes_sent"] + loop["parties"]["server"]["online"]["bytes_sent"]
    want = loop["online"]["seconds"] + loop["online"]["rounds"] * 0.040 + both * 8 / 100e6
    assert wan["online"]["seconds"] == pytest.approx(want)
    assert wan["modelled"]["from"] == "loopback"
    if "proxy-lan" in nets:     # bytes are exact: the same payload, plus TLS/HTTP2 on the wire
        prox = by[("proxy-lan", "mpc")]
        assert prox["online"]["bytes_sent"] == loop["online"]["bytes_sent"]
        assert prox["wire_bytes"] > prox["frame_bytes"] - prox["parties"]["dealer"]["offline"][
            "bytes_sent"]
    crypt = by[("loopback", "crypten")]
    assert crypt["dealer"] == "tfp-party0" and crypt["offline"]["bytes_sent"] == 16
    text = report.write_markdown(recs, tmp_path, str(out))
    assert "| mpc | model-wan (modelled)" in text and "| mpc | loopback (measured)" in text
    assert [p.name for p in report.plots(recs, tmp_path)] == ["summary_digits-mlp.png"]


def test_schema_validation_names_the_problem():
    rec = {"bench": "summary"}
    with pytest.raises(ValueError, match="lacks 'model'"):
        validate_session_record(rec)


def test_unsupported_combinations_are_named():
    assert "token models" in harness.unsupported("digits-cnn", "ee")
    assert "decoders" in harness.unsupported("tiny-gpt", "hybrid")
    assert "decoders" in harness.unsupported("tiny-gpt", "crypten")
    assert harness.unsupported("minilm", "hybrid") is None


def test_plot_ticks_name_each_variant_briefly_and_distinctly():
    labels = ["mpc", "mpc [compare.bits=32]", "mpc [compare.method=bitdecomp, compare.bits=32]",
              "crypten [crypten.gelu=sigmoid]", "he [compare.method=bitdecomp, compare.bits=32]"]
    ticks = [report.short_label(lab) for lab in labels]
    assert ticks == ["mpc", "mpc\n32 bits", "mpc\nbitdecomp, 32 bits", "crypten\ngelu=sigmoid",
                     "he\nbitdecomp, 32 bits"]
    assert len(set(ticks)) == len(ticks)


def test_fidelity_is_the_worst_session_and_broken_sessions_show():
    """One session in five that wraps (CrypTen's local truncation did, once, at MiniLM 128)
    must not hide behind the first session's figure."""
    import types

    import torch

    from benchmarks.harness import worst_fidelity
    from benchmarks.report import broken_sessions

    spec = types.SimpleNamespace(task="embedding", name="e")
    ref = torch.tensor([[1.0, 2.0, 3.0]])
    good, bad = ref + 1e-4, torch.tensor([[3.0, -2.0, -4e9]])
    fid = worst_fidelity(spec, [good, bad, good], ref)
    assert fid["cosine"] < 0.5 and fid["max_abs_error"] > 1e9
    assert len(fid["sessions"]) == 3 and fid["sessions"][0]["cosine"] > 0.999
    assert broken_sessions(fid) == " (worst of 3; 1 broke)"
    assert broken_sessions(worst_fidelity(spec, [good, good], ref)) == " (worst of 2)"
    assert broken_sessions({"cosine": 0.99}) == ""
    cls = types.SimpleNamespace(task="classification", name="digits-cnn")
    logits = torch.tensor([[0.1, 0.9]])
    fid = worst_fidelity(cls, [logits, torch.tensor([[0.9, 0.1]])], logits)
    assert fid["top1_agree"] is False and broken_sessions(fid) == " (worst of 2; 1 broke)"
