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

    @abc.abstractmethod
    def affine(self, x, layer: str):
        """x * W + b elementwise over the last dimension, with the layer's weight W (d,) and
        bias b (d,) (a LayerNorm's scale and shift)."""

    @abc.abstractmethod
    def add_weight(self, x, name: str, rows: int | None = None):
        """x + P for a server tensor P (broadcast; its first ``rows`` rows if given), e.g.
        position embeddings. No product, so no communication under mpc."""

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
    def matmul(self, x, y, integer: bool = False):
        """Product of two activations (batched over leading dims). ``integer``: x holds
        integers without the fixed-point scale (from ``bit_count``, e.g. a one-hot), so
        the product needs no rescaling."""

    @abc.abstractmethod
    def mul_public(self, x, c):
        """Multiply by a public constant (a float, or a float tensor broadcast to x):
        one truncation for all of it."""

    @abc.abstractmethod
    def add_public(self, x, c: float): ...

    # -- structure ---------------------------------------------------------------------------
    @abc.abstractmethod
    def reshape(self, x, shape): ...

    @abc.abstractmethod
    def sum(self, x, dim: int, keepdim: bool = False): ...

    @abc.abstractmethod
    def shape(self, x) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def permute(self, x, dims): ...

    @abc.abstractmethod
    def narrow(self, x, dim: int, start: int, length: int): ...

    @abc.abstractmethod
    def cat(self, xs, dim: int): ...

    # -- comparisons -----------------------------------------------------------------------
    @abc.abstractmethod
    def relu(self, x): ...

    @abc.abstractmethod
    def ltz(self, x):
        """The bit [x < 0], in the backend's bit form (use with ``select``/``bit_value``)."""

    @abc.abstractmethod
    def select(self, bit, x, y):
        """x where ``bit`` is 1, else y."""

    @abc.abstractmethod
    def bit_value(self, bit):
        """A bit as a value (0.0 or 1.0)."""

    @abc.abstractmethod
    def bit_scale(self, bit, coeffs):
        """The value coeffs * bit, exactly (public float coefficients broadcast to the bit)."""

    def max(self, x, y):
        """Elementwise maximum: y + relu(x - y)."""
        return self.add(y, self.relu(self.sub(x, y)))

    def max_last(self, x):
        """Maximum over the last dimension by a tree of pairwise maxima (log2 rounds)."""
        n = self.shape(x)[-1]
        while n > 1:
            half = n // 2
            top = self.max(self.narrow(x, -1, 0, half), self.narrow(x, -1, half, half))
            x = top if n % 2 == 0 else self.cat([top, self.narrow(x, -1, n - 1, 1)], -1)
            n = self.shape(x)[-1]
        return x

    # -- cached operands (a KV cache) --------------------------------------------------------
    def cache_append(self, entries):
        """Append rows to cached tensors in one step. ``entries``: (key, cached or None,
        new, dim) tuples; returns the grown cached values. A row, once written, never
        changes, so a backend may give it a constant-operand mask that serves every later
        product (``matmul_cached``). ``key`` names the tensor (e.g. "l0.k"), unique per
        model run."""
        return [new if old is None else self.cat([old, new], dim) for _, old, new, dim in entries]

    def matmul_cached(self, x, cached, transpose: bool = False, integer: bool = False):
        """x @ cached (or x @ cached^T over the last two dimensions) for a fresh x
        (``integer`` as for ``matmul``)."""
        if transpose:
            n = len(self.shape(cached))
            cached = self.permute(cached, tuple(range(n - 2)) + (n - 1, n - 2))
        return self.matmul(x, cached, integer)

    def bit_count(self, bit):
        """A bit as an integer without the fixed-point scale: only for the x operand of
        ``matmul(..., integer=True)`` and for sums and differences of such values."""
        return self.bit_value(bit)

    def cached_rows(self, cached, start: int, count: int, cluster: int = 1):
        """Rows [start, start + count) of a cached tensor (rows on the next-to-last
        dimension, public range), optionally grouped into clusters of ``cluster`` rows:
        (..., count, d) -> (..., count / cluster, cluster * d). Still a cached operand."""
        x = self.narrow(cached, -2, start, count)
        if cluster == 1:
            return x
        s = self.shape(x)
        return self.reshape(x, s[:-2] + (count // cluster, cluster * s[-1]))

    def index_select(self, x, dim: int, index):
        """Entries of x at public indices along ``dim`` (local under every backend)."""
        return self.cat([self.narrow(x, dim, int(i), 1) for i in index], dim)

    def cached_value(self, cached):
        """A cached tensor as an ordinary backend value (for products not covered by its
        mask, comparisons, reductions)."""
        return cached

    def maxpool2d(self, x, k: int):
        """Non-overlapping k x k max pooling of (B, C, H, W), H and W divisible by k."""
        b, c, h, w = self.shape(x)
        if h % k or w % k:
            raise ValueError(f"maxpool2d: {h}x{w} not divisible by {k}")
        x = self.reshape(x, (b, c, h // k, k, w // k, k))
        x = self.permute(x, (0, 1, 2, 4, 3, 5))
        x = self.reshape(x, (b, c, h // k, w // k, k * k))
        return self.reshape(self.max_last(x), (b, c, h // k, w // k))

    def argmax(self, x):
        """One-hot (0.0/1.0) of the maximum over the last dimension: [x_i >= max(x)].
        Exact ties mark every tied position. Rounds: those of ``max_last`` plus one."""
        top = self.max_last(x)                                  # (..., 1)
        below = self.ltz(self.sub(x, top))                      # x_i < max
        return self.add_public(self.neg(self.bit_value(below)), 1.0)

    def eq(self, x, y):
        """[x == y] as a value (0.0/1.0), to the ulp: 1 - [x - y < 0] - [y - x < 0], both
        sign tests in one batch (one round with fss)."""
        d = self.sub(x, y)
        signs = self.bit_value(self.ltz(self.cat([d, self.neg(d)], 0)))
        n = self.shape(d)[0]
        both = self.add(self.narrow(signs, 0, 0, n), self.narrow(signs, 0, n, n))
        return self.add_public(self.neg(both), 1.0)

    def one_hot(self, index, n: int):
        """One-hot rows (..., n) of integer-valued ``index`` (...,) in [0, n)."""
        s = self.shape(index)
        idx = self.reshape(index, s + (1,))
        cols = torch.arange(n, dtype=torch.float64).expand(s + (n,))
        zeros = self.mul_public(self.cat([idx] * n, -1), 0.0)
        return self.eq(self.cat([idx] * n, -1), self.add_public(zeros, cols))

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


class TensorStructure:
    """Shape-only operations for backends whose values are torch tensors (floats, ring
    shares or meta tensors alike)."""

    def reshape(self, x, shape):
        return x.reshape(shape)

    def shape(self, x):
        return tuple(x.shape)

    def permute(self, x, dims):
        return x.permute(*dims)

    def narrow(self, x, dim, start, length):
        return x.narrow(dim, start, length)

    def cat(self, xs, dim):
        return torch.cat(list(xs), dim)

    def index_select(self, x, dim, index):
        return x.index_select(dim, torch.as_tensor(list(index), dtype=torch.long, device=x.device))


class OperatorArithmetic:
    """``add``, ``sub`` and ``add_weight`` by Python operators, for backends whose values
    support them (plain torch, CrypTen's encrypted tensors, our shares); ``add_weight``
    reads ``self.weights`` (name to server tensor) unless the backend overrides it."""

    def add_weight(self, x, name, rows=None):
        try:
            p = self.weights[name]
        except KeyError:
            raise KeyError(f"no weight {name!r}") from None
        return x + (p if rows is None else p[:rows])

    def add(self, x, y):
        return x + y

    def sub(self, x, y):
        return x - y


class TorchOps(TensorStructure, OperatorArithmetic, Ops):
    """Plain torch: the float64 reference and the fast float32/bf16 path (CPU or CUDA)."""

    def __init__(self, weights: dict[str, torch.Tensor], dtype=torch.float64, device="cpu",
                 exact: bool = False):
        self.name = f"torch-{str(dtype).removeprefix('torch.')}"
        # exact: models may use torch's own GeLU/softmax/LayerNorm instead of the MPC-friendly
        # approximations (the plaintext reference); the approximations stay testable in float
        self.exact = exact
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

    def affine(self, x, layer):
        w, b = self._w(layer)
        return x * w + (0 if b is None else b)

    def neg(self, x):
        return -x

    def mul(self, x, y):
        return x * y

    def square(self, x):
        return x * x

    def matmul(self, x, y, integer=False):
        return x @ y

    def mul_public(self, x, c):
        return x * torch.as_tensor(c, dtype=x.dtype, device=x.device) if torch.is_tensor(c) else x * c

    def add_public(self, x, c):
        return x + (torch.as_tensor(c, dtype=x.dtype, device=x.device) if torch.is_tensor(c) else c)

    def sum(self, x, dim, keepdim=False):
        return x.sum(dim=dim, keepdim=keepdim)

    def relu(self, x):
        return torch.relu(x)

    def max(self, x, y):
        return torch.maximum(x, y)

    def max_last(self, x):
        return x.amax(dim=-1, keepdim=True)

    def ltz(self, x):
        return (x < 0).to(x.dtype)

    def select(self, bit, x, y):
        return torch.where(bit.bool(), x, y)

    def bit_value(self, bit):
        return bit

    def bit_scale(self, bit, coeffs):
        return bit * torch.as_tensor(coeffs, dtype=bit.dtype, device=bit.device)
