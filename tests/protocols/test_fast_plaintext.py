"""The plaintext family's fast path: float32 with one-hot lookups, equal to the float64
reference within float32 precision on every kind of model, and actually gathering."""

from __future__ import annotations

import pytest
import torch

from models.registry import get_model
from protocols.families.plaintext import FastOps, run_fast
from protocols.ops import TorchOps


def _input(name):
    spec = get_model(name)
    if name == "minilm":
        from models.minilm import Tokenizer
        return spec, Tokenizer().one_hot("a fast path must not change the answer", 16)
    if name == "tiny-gpt":
        return spec, spec.decoder.encode_prompt(list(range(1, 30)), 32)
    from models.digits import as_model_input, load_split
    _, x, _, _ = load_split()
    return spec, as_model_input(spec, x[:3])


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp-relu", "minilm", "tiny-gpt"])
def test_fast_path_matches_float64(name):
    spec, x = _input(name)
    w = spec.load_weights()
    ref = spec.forward(TorchOps(w, exact=True), x)
    fast = run_fast(spec, FastOps(w, device="cpu"), x)
    assert fast.dtype == torch.float64
    if spec.decoder is not None:       # padding rows attend to nothing: only real rows count
        real = x[0, :, :spec.decoder.cfg.vocab].sum(-1) > 0
        ref, fast = ref[:, real], fast[:, real]
    assert float((fast - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


def test_one_hot_rows_are_gathered_not_multiplied():
    spec, x = _input("minilm")
    ops = FastOps(spec.load_weights(), device="cpu")
    assert "embed" in ops._rows
    calls = []
    orig = torch.nn.functional.linear
    try:
        torch.nn.functional.linear = lambda *a, **k: calls.append(a[1].shape) or orig(*a, **k)
        ops.linear(ops.input(x), "embed")
    finally:
        torch.nn.functional.linear = orig
    assert calls == []
    dense = torch.zeros_like(ops.input(x))
    dense[0, 0, :3] = 0.5                                # not one-hot: the matmul path
    assert torch.allclose(ops.linear(dense, "embed"),
                          TorchOps(spec.load_weights(), dtype=torch.float32).linear(dense, "embed"))


def test_token_inputs_travel_sparse_and_bad_frames_are_refused(tmp_path):
    from protocols.families.plaintext import pack_input, unpack_input
    from protocols.registry import get_family
    from tests.helpers import run_family
    spec, x = _input("minilm")
    packed = pack_input(spec, x)
    assert packed.shape == (2, int(x.sum())) and torch.equal(unpack_input(spec, x.shape, packed), x)
    outs, cctx, _, _ = run_family(get_family("plaintext"), spec, spec.load_weights(), [x], tmp_path)
    assert cctx.meter.total("online").payload_sent == packed.numel() * 8      # not 16 x 30522 x 8
    ref = spec.forward(TorchOps(spec.load_weights(), exact=True), x)
    assert float((outs[0] - ref).abs().max()) < 1e-4
    for bad, why in ((torch.tensor([[1e9], [1.0]], dtype=torch.float64), "indices"),
                     (torch.tensor([[0.5], [1.0]], dtype=torch.float64), "indices"),
                     (torch.zeros((3, 2), dtype=torch.float64), "expected float64"),
                     (torch.zeros((2, 2), dtype=torch.int64), "expected float64")):
        with pytest.raises(ValueError, match=why):
            unpack_input(spec, x.shape, bad)
    digits, img = _input("digits-cnn")
    assert pack_input(digits, img) is img                      # dense models: unchanged
