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


def test_he_refuses_layers_it_does_not_support(tmp_path):
    spec = get_model("minilm")
    x = torch.zeros((1, 16, spec.input_shape[1]), dtype=torch.float64)
    with pytest.raises(ValueError, match="elementwise server weights"):
        run_family(get_family("he"), spec, {}, [x], tmp_path)
