"""Ops: the operation set that models and approximations are written against.

A model never sees a backend: it calls ``ops.linear(x, "fc1")`` and the backend looks up
the layer's weights (``fc1.weight`` of shape (out, in), ``fc1.bias`` of shape (out,)) in
whatever form it holds them: float tensors for ``TorchOps``, a server-held weight with a
constant-operand mask under ``mpc``. So one model definition runs in plaintext and on
shares.

Layer weights are the server's; activations flow through the ops as backend values
(float tensors, or shares). Public constants are Python floats.
"""

from __future__ import annotations

import abc
import contextlib

import torch
import torch.nn.functional as F


class Ops(abc.ABC):
    """Backend-agnostic operations. Shapes are public everywhere."""

    name: str = "abstract"

    # -- layers with server weights ----------------------------------------------------------
    @abc.abstractmethod
    def linear(self, x, layer: str):
        """x (..., in) @ W^T + b with the layer's weight W (out, in) and bias b (out,)."""

    @abc.abstractmethod
    def conv2d(self, x, layer: str, *, stride: int = 1, padding: int = 0):
        """2-d convolution of x (B, C, H, W) with the layer's weight (O, C, kh, kw) and bias."""

    # -- arithmetic on activations -----------------------------------------------------------
    @abc.abstractmethod
    def add(self, x, y): ...

    @abc.abstractmethod
    def sub(self, x, y): ...

    @abc.abstractmethod
    def neg(self, x): ...

    @abc.abstractmethod
    def mul(self, x, y):
        """Elementwise product of two activations."""

    @abc.abstractmethod
    def square(self, x): ...

    @abc.abstractmethod
    def matmul(self, x, y):
        """Product of two activations (batched over leading dims)."""

    @abc.abstractmethod
    def mul_public(self, x, c: float):
        """Multiply by a public constant."""

    @abc.abstractmethod
    def add_public(self, x, c: float): ...

    # -- structure ---------------------------------------------------------------------------
    @abc.abstractmethod
    def reshape(self, x, shape): ...

    @abc.abstractmethod
    def sum(self, x, dim: int, keepdim: bool = False): ...

    @abc.abstractmethod
    def shape(self, x) -> tuple[int, ...]: ...

    def flatten(self, x, start_dim: int = 1):
        s = self.shape(x)
        rest = 1
        for d in s[start_dim:]:
            rest *= d
        return self.reshape(x, tuple(s[:start_dim]) + (rest,))

    def mean(self, x, dim: int, keepdim: bool = False):
        n = self.shape(x)[dim]
        return self.mul_public(self.sum(x, dim, keepdim), 1.0 / n)

    @contextlib.contextmanager
    def scope(self, name: str):
        """Name a region for metering (no-op where nothing is metered)."""
        yield


class TorchOps(Ops):
    """Plain torch: the float64 reference and the fast float32/bf16 path (CPU or CUDA)."""

    def __init__(self, weights: dict[str, torch.Tensor], dtype=torch.float64, device="cpu"):
        self.name = f"torch-{str(dtype).removeprefix('torch.')}"
        self.dtype = dtype
        self.device = torch.device(device)
        self.weights = {k: v.to(device=self.device, dtype=dtype) for k, v in weights.items()}

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x).to(device=self.device, dtype=self.dtype)

    def _w(self, layer: str):
        try:
            return self.weights[f"{layer}.weight"], self.weights.get(f"{layer}.bias")
        except KeyError:
            raise KeyError(f"no weights for layer {layer!r}") from None

    def linear(self, x, layer):
        w, b = self._w(layer)
        return F.linear(x, w, b)

    def conv2d(self, x, layer, *, stride=1, padding=0):
        w, b = self._w(layer)
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    def add(self, x, y):
        return x + y

    def sub(self, x, y):
        return x - y

    def neg(self, x):
        return -x

    def mul(self, x, y):
        return x * y

    def square(self, x):
        return x * x

    def matmul(self, x, y):
        return x @ y

    def mul_public(self, x, c):
        return x * c

    def add_public(self, x, c):
        return x + c

    def reshape(self, x, shape):
        return x.reshape(shape)

    def sum(self, x, dim, keepdim=False):
        return x.sum(dim=dim, keepdim=keepdim)

    def shape(self, x):
        return tuple(x.shape)
