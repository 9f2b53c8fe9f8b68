"""Delphi-style linear layers with the server's weights (``hybrid``): HE makes the masks
offline, so that online a layer costs one masked vector from the client.

Offline, per inference and per layer W (m, n) applied to T rows:
  1. client: r uniform in Z_2^64 (T, n), expanded from its own AES-CTR seed; sends
     Enc(r mod 2^48) in coefficient packing (``he.coeff_matmul``);
  2. server: Enc(W r) per reply; adds S uniform mod 2^48 in every coefficient,
     re-randomises, floods and drops a prime (``he.bfv``); keeps s, the outputs' part of S;
  3. client: decrypts z = W r + s mod 2^48 and keeps c = 2^16 z (ring).
  Then 2^16 (z - s) = 2^16 W r in Z_2^64 exactly (``he.bfv``: the lift).
Online:
  1. client -> server: u = x_c - r (one message, T n ring elements);
  2. server: v = u + x_s = x - r; its share 2^16 (W v - s) + 2^(2f+16) b, the client's c:
     they sum to 2^16 (W x + 2^f b) at scale 2^2f;
  3. both: truncation by f + 16 bits (the dealer's truncation pair, 1 round, as after every
     fixed-point product: the products themselves need no dealer material).
Communication: offline ``Geometry.inputs`` ciphertexts up and ``outputs`` down per layer
and inference; online T n * 8 bytes up, then the truncation.
Leaks: the server sees u = x - r, uniform (r uniform in Z_2^64, used once); the client
sees z, uniform mod 2^48 in every coefficient, with the decryption noise flooded
(statistical parameter ``he.bfv.check_margin`` per coefficient, >= 64 bits).
Masks serve one inference: a second use raises.
"""

from __future__ import annotations

import numpy as np
import torch

from he import coeff_matmul as cm
from he.bfv import LIFT, check_margin, noise_bound_bits
from mpc import prg

LABEL_MASK = 7          # the client's PRG label for Delphi masks


def mod_t(x: torch.Tensor, t: int) -> np.ndarray:
    return (x.numpy().astype(np.uint64)) & np.uint64(t - 1)


def client_mask(seed: bytes, stream: int, shape) -> torch.Tensor:
    return prg.expand(seed, stream, LABEL_MASK, shape)


def client_inputs(keys, geom: cm.Geometry, r: torch.Tensor) -> list:
    """Step 1: Enc(r mod t), one ciphertext per (token block, input block)."""
    return [keys.encrypt(c) for c in cm.input_polys(geom, mod_t(r, keys.params.t))]


class ServerLayer:
    """The server's encoding of one layer: W in the ring and as NTT plaintexts."""

    def __init__(self, server, geom: cm.Geometry, w_ring: torch.Tensor, bias_ring, what: str):
        self.geom = geom
        self.w = w_ring                      # (m, n) int64, scale 2^f
        self.bias = bias_ring                # (m,) int64 at scale 2^(2f + LIFT), or None
        self.encoded = cm.EncodedWeights(geom, mod_t(w_ring, server.params.t), server.context)
        terms = geom.m_b * geom.n_b * geom.in_blocks
        self.sigma = check_margin(noise_bound_bits(int(w_ring.abs().max()), terms), what)


def server_replies(server, layer: ServerLayer, cts: list):
    """Step 2: the masked, flooded replies and the server's share -2^16 s (T, m)."""
    g = layer.geom
    pos = g.output_positions().reshape(-1)
    replies, parts = [], []
    for ct in cm.multiply(server, cts, layer.encoded):
        mask = server.uniform_mask()
        replies.append(server.finish_for_client(ct, mask))
        parts.append(mask[pos].reshape(g.t_b, g.m_b))
    s = torch.from_numpy(cm.gather(g, parts).astype(np.int64))
    return replies, -(s << LIFT)


def client_shares(keys, geom: cm.Geometry, replies: list) -> torch.Tensor:
    """Step 3: c = 2^16 z (T, m)."""
    pos = geom.output_positions().reshape(-1)
    z = cm.gather(geom, [keys.decrypt(ct, pos).reshape(geom.t_b, geom.m_b) for ct in replies])
    return torch.from_numpy(z.astype(np.int64)) << LIFT


def server_online(layer: ServerLayer, u: torch.Tensor, x_s: torch.Tensor,
                  share: torch.Tensor) -> torch.Tensor:
    """Online step 2: the server's share of 2^16 (W x + 2^f b), before truncation."""
    v = u + x_s
    out = ((v @ layer.w.t()) << LIFT) + share
    return out if layer.bias is None else out + layer.bias
