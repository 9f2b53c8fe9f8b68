"""The ``he`` protocol end to end (in-process parties, in-process dealer): digits MLPs
agree with plaintext, only the output is revealed, unsupported layers are refused."""

from __future__ import annotations

import pytest
import torch

from models.digits import as_model_input, load_split
from models.registry import get_model
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import run_family


@pytest.mark.parametrize("model", ["digits-mlp", "digits-mlp-relu", "digits-cnn",
                                   "digits-cnn-relu"])
def test_he_matches_plaintext(model, tmp_path):
    spec = get_model(model)
    w = spec.load_weights()
    _, x_test, _, _ = load_split()
    xs = [as_model_input(spec, x_test[i:i + 1]) for i in (0, 17, 101)]
    outs, cctx, sctx, (client, server) = run_family(get_family("he"), spec, w, xs, tmp_path)
    for x, y in zip(xs, outs):
        ref = spec.forward(TorchOps(w, exact=True), x)
        assert float((y - ref).abs().max()) < 0.01
        assert int(y.argmax()) == int(ref.argmax())
    assert [(r.to, r.tag) for r in cctx.meter.reveals] == [("client", "output")] * len(xs)
    assert client.store.remaining == 0 and server.store.remaining == 0
    assert not hasattr(server.server_keys, "secret_key")
    # per linear layer: a masked ring vector and two ciphertexts, no dealer material
    assert cctx.meter.total("offline", "he.keys").payload_sent > 1_000_000


@pytest.mark.parametrize("protocol", ["he", "hybrid"])
def test_decoders_are_refused_at_plan_time(tmp_path, protocol):
    spec = get_model("tiny-gpt")
    x = torch.zeros((1,) + tuple(spec.input_shape), dtype=torch.float64)
    with pytest.raises(ValueError, match=f"{protocol}: decoders are not supported"):
        run_family(get_family(protocol), spec, {}, [x], tmp_path)


def test_a_malformed_ciphertext_is_refused_by_name():
    from he.keys import ClientKeys, HeContextError, ServerKeys
    from he.layer import recv_ct
    from he.params import get_param_set

    ps = get_param_set("n8192-d2")
    ck = ClientKeys.generate(ps, [1])
    sk = ServerKeys.from_bundle(ck.public_bundle(), (ps.name,))

    class OneFrame:
        def __init__(self, tensor):
            self.tensor = tensor

        def recv(self, tag):
            return self.tensor

    with pytest.raises(HeContextError, match="malformed ciphertext x.he.input"):
        recv_ct(OneFrame(torch.zeros(100, dtype=torch.uint8)), "x.he.input", sk.context)
    with pytest.raises(ValueError, match="serialised ciphertext bytes"):
        recv_ct(OneFrame(torch.zeros(3, dtype=torch.int64)), "x.he.input", sk.context)


def test_client_storage_counts_the_he_keys(tmp_path):
    spec = get_model("digits-mlp")
    _, x_test, _, _ = load_split()
    xs = [as_model_input(spec, x_test[:1])]
    _, _, _, (client, _) = run_family(get_family("he"), spec, spec.load_weights(), xs, tmp_path)
    assert client.peak_storage_bytes() > 1_000_000      # Galois keys dominate
