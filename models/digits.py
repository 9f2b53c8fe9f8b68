"""Digits (8x8, scikit-learn) MLPs and CNNs written against Ops.

Square activations (as in CryptoNets) need only Beaver products; the ReLU versions need
secure comparisons. Inputs are pixel intensities / 16, in [0, 1].

  digits-mlp:      (B, 64) -> fc1 64->64 -> x^2 -> fc2 64->10
  digits-cnn:      (B, 1, 8, 8) -> conv1 1->8 3x3 pad 1 -> x^2 -> conv2 8->16 3x3 stride 2
                   pad 1 -> x^2 -> flatten (256) -> fc 256->10
  digits-mlp-relu: (B, 64) -> fc1 64->64 -> ReLU -> fc2 64->10
  digits-cnn-relu: (B, 1, 8, 8) -> conv1 1->8 3x3 pad 1 -> ReLU -> maxpool 2 -> conv2 8->16
                   3x3 pad 1 -> ReLU -> maxpool 2 -> flatten (64) -> fc 64->10
"""

from __future__ import annotations

import numpy as np
import torch

from models.spec import WEIGHTS_DIR, ModelSpec


def mlp_forward(ops, x):
    # x: (B, 64)
    with ops.scope("fc1"):
        h = ops.linear(x, "fc1")                          # (B, 64)
    with ops.scope("act1"):
        h = ops.square(h)
    with ops.scope("fc2"):
        return ops.linear(h, "fc2")                       # (B, 10)


def cnn_forward(ops, x):
    # x: (B, 1, 8, 8)
    with ops.scope("conv1"):
        h = ops.conv2d(x, "conv1", stride=1, padding=1)   # (B, 8, 8, 8)
    with ops.scope("act1"):
        h = ops.square(h)
    with ops.scope("conv2"):
        h = ops.conv2d(h, "conv2", stride=2, padding=1)   # (B, 16, 4, 4)
    with ops.scope("act2"):
        h = ops.square(h)
    h = ops.flatten(h, 1)                                 # (B, 256)
    with ops.scope("fc"):
        return ops.linear(h, "fc")                        # (B, 10)


def mlp_relu_forward(ops, x):
    with ops.scope("fc1"):
        h = ops.linear(x, "fc1")                          # (B, 64)
    with ops.scope("act1"):
        h = ops.relu(h)
    with ops.scope("fc2"):
        return ops.linear(h, "fc2")                       # (B, 10)


def cnn_relu_forward(ops, x):
    with ops.scope("conv1"):
        h = ops.conv2d(x, "conv1", stride=1, padding=1)   # (B, 8, 8, 8)
    with ops.scope("act1"):
        h = ops.relu(h)
    with ops.scope("pool1"):
        h = ops.maxpool2d(h, 2)                           # (B, 8, 4, 4)
    with ops.scope("conv2"):
        h = ops.conv2d(h, "conv2", stride=1, padding=1)   # (B, 16, 4, 4)
    with ops.scope("act2"):
        h = ops.relu(h)
    with ops.scope("pool2"):
        h = ops.maxpool2d(h, 2)                           # (B, 16, 2, 2)
    h = ops.flatten(h, 1)                                 # (B, 64)
    with ops.scope("fc"):
        return ops.linear(h, "fc")                        # (B, 10)


DIGITS_MLP = ModelSpec(
    name="digits-mlp", input_shape=(64,),
    params={"fc1.weight": (64, 64), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)},
    forward=mlp_forward, input_range=(0.0, 1.0), weights_file=WEIGHTS_DIR / "digits-mlp.safetensors")

DIGITS_CNN = ModelSpec(
    name="digits-cnn", input_shape=(1, 8, 8),
    params={"conv1.weight": (8, 1, 3, 3), "conv1.bias": (8,),
            "conv2.weight": (16, 8, 3, 3), "conv2.bias": (16,),
            "fc.weight": (10, 256), "fc.bias": (10,)},
    forward=cnn_forward, input_range=(0.0, 1.0), weights_file=WEIGHTS_DIR / "digits-cnn.safetensors")


DIGITS_MLP_RELU = ModelSpec(
    name="digits-mlp-relu", input_shape=(64,), params=dict(DIGITS_MLP.params),
    forward=mlp_relu_forward, input_range=(0.0, 1.0), weights_file=WEIGHTS_DIR / "digits-mlp-relu.safetensors")

DIGITS_CNN_RELU = ModelSpec(
    name="digits-cnn-relu", input_shape=(1, 8, 8),
    params={"conv1.weight": (8, 1, 3, 3), "conv1.bias": (8,),
            "conv2.weight": (16, 8, 3, 3), "conv2.bias": (16,),
            "fc.weight": (10, 64), "fc.bias": (10,)},
    forward=cnn_relu_forward, input_range=(0.0, 1.0), weights_file=WEIGHTS_DIR / "digits-cnn-relu.safetensors")


def load_split():
    """The digits split used everywhere: (X_train, X_test, y_train, y_test), X in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = (data.data / 16.0).astype(np.float64)
    return train_test_split(X, data.target, test_size=360, random_state=0, stratify=data.target)


def as_model_input(spec: ModelSpec, flat: np.ndarray) -> torch.Tensor:
    """(B, 64) pixel rows to the model's input shape."""
    x = torch.as_tensor(flat, dtype=torch.float64)
    return x.reshape((x.shape[0],) + tuple(spec.input_shape))
