"""The ``crypten`` family: CrypTen in worker processes, relayed over our metered channel."""

from __future__ import annotations

import dataclasses
import importlib.util
import io

import pytest
import torch
import torch.nn.functional as F

from models.registry import get_model
from protocols.channel import PeerError, run_pair
from protocols.config import Config, ConfigError
from protocols.families import crypten_family
from protocols.families.crypten_pipe import PipeError, read_msg, write_msg
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import make_contexts, run_family
from tests.models.test_bert import TINY, one_hot, tiny_spec, tiny_weights

pytestmark = pytest.mark.skipif(importlib.util.find_spec("crypten") is None,
                                reason="crypten 0.4.1 not installed")
FAMILY = get_family("crypten")


def _digits_inputs(spec, n):
    from models.digits import as_model_input, load_split
    _, x_test, _, _ = load_split()
    return [as_model_input(spec, x_test[i:i + 1]) for i in range(n)]


def _close(roles):
    for r in roles:
        r.close()


def test_digits_cnn_matches_plaintext_with_exact_offline_traffic(tmp_path):
    spec = get_model("digits-cnn")
    w = spec.load_weights()
    xs = _digits_inputs(spec, 3)
    outs, cctx, sctx, roles = run_family(FAMILY, spec, w, xs, tmp_path)
    try:
        for x, y in zip(xs, outs):
            ref = spec.forward(TorchOps(w, exact=True), x)
            assert torch.equal(y.argmax(-1), ref.argmax(-1))
            assert (y - ref).abs().max() <= 1e-3 * ref.abs().max()
        c, s = cctx.meter.summary(), sctx.meter.summary()
        # offline: CrypTen's seed set-up only. The client (rank 0) sends its next-party seed
        # and broadcasts the global seed (8 bytes each); it receives the server's seed.
        assert (c["offline"]["bytes_sent"], c["offline"]["bytes_received"]) == (16, 8)
        assert (s["offline"]["bytes_sent"], s["offline"]["bytes_received"]) == (8, 16)
        # every byte one party sends, the other receives; both count the same rounds
        assert c["online"]["bytes_sent"] == s["online"]["bytes_received"] > 0
        assert c["online"]["rounds"] == s["online"]["rounds"] > 0
        # per-scope metering reaches through the worker
        assert cctx.meter.total("online", "conv1").payload_sent > 0
    finally:
        _close(roles)


def _tiny():
    return dataclasses.replace(
        tiny_spec(), notes={**tiny_spec().notes, "spec_ref": "tests.models.test_bert:tiny_spec"})


@pytest.mark.parametrize("gelu,min_cos", [("tanh", 0.9999), ("sigmoid", 0.99)])
def test_tiny_bert_with_crypten_functions(tmp_path, gelu, min_cos):
    spec, w = _tiny(), tiny_weights(1)
    x = one_hot([3, 7, 1, 30, 2, 9], 8, TINY.vocab)
    cfg = Config().with_overrides([f"crypten.gelu={gelu}"])
    outs, cctx, sctx, roles = run_family(FAMILY, spec, w, [x], tmp_path, config=cfg)
    try:
        ref = spec.forward(TorchOps(w, exact=True), x)
        assert F.cosine_similarity(outs[0], ref).min() >= min_cos
        # Leaks: the output, to the client, is the only reveal; the server logs none
        assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("client", "crypten.output")]
        assert sctx.meter.reveals == []
        scopes = cctx.meter.scopes("online")
        assert any(k.endswith("softmax") for k in scopes) and any("gelu" in k for k in scopes)
    finally:
        _close(roles)


def test_leaks_and_dealer_are_declared():
    doc = crypten_family.__doc__
    assert "Leaks:" in doc and "party 0 (the client)" in doc and "recover the server's" in doc
    assert FAMILY.dealer_label == "tfp-party0" and FAMILY.uses_dealer is False


def test_config_and_refusals(tmp_path):
    with pytest.raises(ConfigError, match="crypten.gelu"):
        Config().with_overrides(["crypten.gelu=erf"])
    assert Config().with_overrides(["crypten.gelu=sigmoid"]).digest() != Config().digest()
    gpt = get_model("tiny-gpt")
    cctx, _, _ = make_contexts(gpt, (1,) + gpt.input_shape, tmp_path)
    with pytest.raises(ValueError, match="decoder"):
        FAMILY.client(cctx)


def test_worker_refuses_a_model_that_resolves_differently(tmp_path):
    spec = dataclasses.replace(get_model("digits-mlp"), notes={"spec_ref": "digits-cnn"})
    cctx, sctx, _ = make_contexts(spec, (1,) + spec.input_shape, tmp_path)
    client = FAMILY.client(cctx)
    try:
        with pytest.raises(RuntimeError, match="resolves to architecture"):
            client.offline()
    finally:
        client.close(failed=True)


def test_a_killed_worker_ends_both_parties_with_an_error(tmp_path):
    spec = get_model("digits-mlp")
    x = _digits_inputs(spec, 1)[0]
    cctx, sctx, _ = make_contexts(spec, x.shape, tmp_path)
    cctx.channel.recv_timeout = sctx.channel.recv_timeout = 10.0
    client, server = FAMILY.client(cctx), FAMILY.server(sctx, spec.load_weights())

    def run_client():
        client.offline()
        client.worker.proc.kill()            # the client's CrypTen process dies
        try:
            client.online(x)
        finally:
            cctx.channel.abort("client failed")

    def run_server():
        server.offline()
        server.online()

    try:
        with pytest.raises((PipeError, PeerError)):
            run_pair(run_client, run_server, timeout=30)
    finally:
        procs = [r.worker.proc for r in (client, server) if r.worker]
        client.close(failed=True)
        server.close(failed=True)
    assert all(p.poll() is not None for p in procs)


def test_pipe_messages_round_trip_and_malformed_ones_are_named():
    buf = io.BytesIO()
    t = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    write_msg(buf, {"op": "send", "tag": "ct.p2p"}, t)
    write_msg(buf, {"op": "ready"})
    buf.seek(0)
    head, got = read_msg(buf)
    assert head["op"] == "send" and torch.equal(got, t)
    assert read_msg(buf) == ({"op": "ready"}, None)
    head = b'{"op": "x", "dtype": "int64", "shape": [4]}'
    for raw, match in ((b"\x00\x00\x00\x05{bad", "closed after"),
                       (b"\x00\x00\x00\x02[]", "without an op"),
                       (b"\xff\xff\xff\xff", "exceeds"),
                       (len(head).to_bytes(4, "big") + head, "closed after 0 of 32")):
        with pytest.raises(PipeError, match=match):
            read_msg(io.BytesIO(raw))
