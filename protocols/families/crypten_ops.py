"""``CryptenOps``: the Ops set on CrypTen's ``MPCTensor``s, so our models run under CrypTen.

Runs inside a CrypTen worker process (``crypten_worker``); never imported where CrypTen's
global state would be shared. Values are CrypTen MPC tensors (arithmetic shares over
Z_2^64, 16 fractional bits, CrypTen's own encoding); server weights are encrypted by the
server once per session (``crypten.cryptensor(w, src=SERVER)``: a pseudo-random zero
sharing plus the owner's value, no communication).

Pinned for comparisons (issue #8): CrypTen's own functions wherever it has them.
* linear, conv2d, affine and activation products: CrypTen's Beaver products with both
  operands encrypted (it re-opens W - B on every forward: its cost, kept).
* ReLU, comparisons, max pooling, max over a dimension: CrypTen's own (``relu``, ``_ltz``,
  ``max_pool2d``, ``max`` by log reduction).
* softmax: ``MPCTensor.softmax`` (max subtraction, exp by (1 + x/2^8)^(2^8), reciprocal by
  Newton).
* GeLU, ``gelu="tanh"`` (default): the tanh form 0.5 x (1 + tanh(sqrt(2/pi)(u + 0.044715
  u^3))) with u = x clamped to [-8, 8] by CrypTen's ``hardtanh`` (its tanh is 2 sigmoid(2z)
  - 1); ``gelu="sigmoid"``: x sigmoid(1.702 x), cheaper and less accurate (a second row).
* LayerNorm: mean and variance by products, then CrypTen's ``inv_sqrt`` with its defaults
  (3 Newton steps from its own initial guess; it converges for inputs in about [0.15, 100]).
  Input scaling, stated: LayerNorm is scale invariant, so the centred input of a layer
  named in ``LN_INPUT_SCALE`` is multiplied by that public factor first (its variance by
  the square). MiniLM's variances, measured on real sentences: 0.11..130 in the encoder
  layers (no scaling), 0.001..0.029 after the embedding (``embed_ln``: x16, to 0.26..7.4).
* The final L2 normalisation: the same ``inv_sqrt`` on the squared norm, unscaled, with
  ``NORM_ITERS`` Newton steps instead of 3: MiniLM's squared norms of mean-pooled states
  span about 0.03 (a short sentence in the 128 bucket) to 40 (a full bucket), and from its
  initial guess (about 2) Newton needs 6 steps to reach 1/sqrt(0.03).
"""

from __future__ import annotations

import contextlib
import math

import torch

from protocols.ops import OperatorArithmetic, Ops

LN_INPUT_SCALE = {"embed_ln": 16.0}   # public factors on centred LayerNorm inputs
NORM_ITERS = 6                        # Newton steps for the final normalisation
GELU_FORMS = ("tanh", "sigmoid")


class CryptenOps(OperatorArithmetic, Ops):
    """Ops on CrypTen MPC tensors; ``weights`` maps names to encrypted tensors."""

    def __init__(self, crypten, weights: dict, *, gelu: str = "tanh", on_scope=None):
        if gelu not in GELU_FORMS:
            raise ValueError(f"crypten gelu form {gelu!r}; expected one of {GELU_FORMS}")
        self.crypten = crypten
        self.weights = weights
        self.gelu = gelu
        self.name = f"crypten-{gelu}"
        self._on_scope = on_scope

    # -- server weights --------------------------------------------------------------------
    def _w(self, layer):
        try:
            return self.weights[f"{layer}.weight"], self.weights.get(f"{layer}.bias")
        except KeyError:
            raise KeyError(f"no weights for layer {layer!r}") from None

    def linear(self, x, layer):
        w, b = self._w(layer)
        y = x.matmul(w.t())
        return y if b is None else y + b

    def conv2d(self, x, layer, *, stride=1, padding=0):
        w, b = self._w(layer)
        y = x.conv2d(w, stride=stride, padding=padding)
        return y if b is None else y + b.reshape(1, -1, 1, 1)

    def affine(self, x, layer):
        w, b = self._w(layer)
        y = x * w
        return y if b is None else y + b

    # -- arithmetic (add, sub, add_weight: OperatorArithmetic) ------------------------------
    def neg(self, x):
        return x.neg()

    def mul(self, x, y):
        return x * y

    def square(self, x):
        return x.square()

    def matmul(self, x, y, integer=False):
        return x.matmul(y)

    def mul_public(self, x, c):
        return x * (torch.as_tensor(c, dtype=torch.float64).float() if torch.is_tensor(c) else c)

    def add_public(self, x, c):
        return x + (torch.as_tensor(c).float() if torch.is_tensor(c) else c)

    # -- structure -------------------------------------------------------------------------
    def reshape(self, x, shape):
        return x.reshape(*shape)

    def sum(self, x, dim, keepdim=False):
        return x.sum(dim, keepdim=keepdim)

    def shape(self, x):
        return tuple(x.size())

    def permute(self, x, dims):
        return x.permute(*dims)

    def narrow(self, x, dim, start, length):
        return x.narrow(dim, start, length)

    def cat(self, xs, dim):
        return self.crypten.cat(list(xs), dim=dim)

    def index_select(self, x, dim, index):
        return x.index_select(dim, torch.as_tensor(list(index), dtype=torch.long))

    # -- comparisons (CrypTen's own) -------------------------------------------------------
    def relu(self, x):
        return x.relu()

    def ltz(self, x):
        return x < 0

    def select(self, bit, x, y):
        return y + bit * (x - y)

    def bit_value(self, bit):
        return bit

    def bit_scale(self, bit, coeffs):
        return bit * torch.as_tensor(coeffs, dtype=torch.float64).float()

    def max_last(self, x):
        return x.max(dim=-1, keepdim=True)[0]

    def maxpool2d(self, x, k):
        return x.max_pool2d(k)

    # -- CrypTen's own nonlinear functions (picked up by models.blocks.native) ---------------
    def native_softmax(self, s):
        return s.softmax(-1)

    def native_gelu(self, x):
        if self.gelu == "sigmoid":
            return x * (x * 1.702).sigmoid()
        u = x.hardtanh(-8.0, 8.0)
        inner = (u + u.square() * u * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * (inner.tanh() + 1.0) * 0.5

    def native_layernorm(self, x, eps, name=""):
        c = LN_INPUT_SCALE.get(name, 1.0)
        d = x - x.mean(-1, keepdim=True)
        if c != 1.0:
            d = d * c
        var = d.square().mean(-1, keepdim=True)
        return d * (var + eps * c * c).inv_sqrt()

    def native_rsqrt(self, v):
        with self.crypten.cfg.temp_override({"functions.sqrt_nr_iters": NORM_ITERS}):
            return v.inv_sqrt()

    @contextlib.contextmanager
    def scope(self, name):
        if self._on_scope is None:
            yield
            return
        self._on_scope("enter", name)
        try:
            yield
        finally:
            self._on_scope("exit", name)
