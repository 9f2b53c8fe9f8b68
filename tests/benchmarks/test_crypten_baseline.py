"""CrypTen baseline: the torch 2.13 import shim and a small real 2-process TFP run."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from protocols.families import crypten_compat

needs_crypten = pytest.mark.skipif(importlib.util.find_spec("crypten") is None,
                                   reason="crypten 0.4.1 not installed")


@needs_crypten
def test_import_crypten_shim_is_idempotent():
    first = crypten_compat.import_crypten()
    assert crypten_compat.import_crypten() is first and first.__version__ == "0.4.1"
    assert crypten_compat.OLD in sys.modules  # old path importable, aliased or native
    import crypten.nn.onnx_converter  # noqa: F401  (the module that needs the old path)


@needs_crypten
@pytest.mark.timeout(120)
def test_relu_1000_tfp_record():
    from benchmarks import crypten_baseline as cb

    (rec,) = cb.run(repeats=1, ops=("relu",), providers=("tfp",), shapes={"relu": (1000,)},
                    timeout=90)
    for key in ("bench", "machine", "git", "op", "protocol", "method", "params", "online",
                "parties", "total_bytes", "fidelity", "dealer", "threads", "net", "counting"):
        assert key in rec, key
    assert (rec["bench"], rec["op"], rec["protocol"], rec["method"]) == \
        ("nonlinear", "relu", "crypten", "tfp")
    assert rec["params"]["shape"] == [1000] and rec["params"]["repeats"] == 1
    assert rec["threads"] == 1 and rec["params"]["threads"] == 1
    assert rec["dealer"] == "tfp-party0" and rec["net"] == "loopback"
    online = rec["online"]
    assert set(online) >= {"seconds", "bytes_sent", "bytes_received", "rounds"}
    assert online["seconds"] > 0 and online["rounds"] > 0
    assert online["bytes_sent"] > 0 and online["bytes_received"] > 0
    client, server = rec["parties"]["client"], rec["parties"]["server"]
    # The split adds up to CrypTen's own tally; ReLU is symmetric all_reduces under TFP.
    assert online["bytes_sent"] + online["bytes_received"] == client["crypten_tally"]["bytes"]
    assert client["crypten_tally"] == server["crypten_tally"]
    assert rec["total_bytes"] == client["peer"]["sent"] + server["peer"]["sent"] > 0
    assert client["ttp_requests"] == 0 and client["dealer_traffic"]["calls"] == 0
    assert 0 <= rec["fidelity"]["max_abs_error"] < 0.01
