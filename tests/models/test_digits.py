"""Digits models: committed weights, deterministic training, and weight-file checks."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.digits import DIGITS_CNN, DIGITS_MLP
from models.spec import WeightsError
from models.train_digits import evaluate, train

SPECS = [DIGITS_MLP, DIGITS_CNN]
IDS = [s.name for s in SPECS]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_committed_weights_accuracy(spec):
    weights = spec.load_weights()
    assert set(weights) == set(spec.params)
    assert all(w.dtype == torch.float64 for w in weights.values())
    assert evaluate(spec, weights) >= 0.95


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_training_is_deterministic(spec):
    w1, acc1 = train(spec, epochs=1)
    w2, acc2 = train(spec, epochs=1)
    assert acc1 == acc2
    assert set(w1) == set(spec.params)
    for name, t in w1.items():
        assert t.shape == spec.params[name]
        assert torch.equal(t, w2[name]), name


def _good(spec):
    return {k: v.clone() for k, v in load_file(str(spec.weights_file)).items()}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_rejects_corrupted_file(spec, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(spec.weights_file.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        spec.load_weights(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        spec.load_weights(garbage)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_rejects_missing_tensor(spec, tmp_path):
    tensors = _good(spec)
    name = sorted(tensors)[0]
    del tensors[name]
    path = tmp_path / "missing.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(WeightsError, match=rf"missing tensors \['{name}'\]"):
        spec.load_weights(path)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_rejects_wrong_shape(spec, tmp_path):
    tensors = _good(spec)
    name = next(k for k in tensors if k.endswith(".weight"))
    tensors[name] = tensors[name][:-1].contiguous()
    path = tmp_path / "shape.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(WeightsError, match=rf"tensor {name} has shape"):
        spec.load_weights(path)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_rejects_pickle(spec, tmp_path):
    tensors = _good(spec)
    raw = tmp_path / "weights.pkl"
    raw.write_bytes(pickle.dumps(tensors, protocol=4))
    with pytest.raises(WeightsError, match="pickle"):
        spec.load_weights(raw)
    zipped = tmp_path / "weights.pt"
    torch.save(tensors, zipped)
    with pytest.raises(WeightsError, match="pickle"):
        spec.load_weights(zipped)


def test_rejects_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        DIGITS_MLP.load_weights(tmp_path / "nope.safetensors")
