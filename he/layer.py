"""A linear layer with the server's weights on shares, computed under CKKS (``he``).

Input: additive ring shares x = x_c + x_s (B, n), B tokens packed in one ciphertext.
  1. server -> client: x_s + r (ring), r a bounded mask (``he.convert``);
  2. client -> server: Enc(x + t), t = r / 2^f (it decodes x + t from its share);
  3. the server subtracts t under encryption, multiplies by W (BSGS, ``he.matvec``), masks
     and re-randomises the result (``he.convert``), and keeps -r' + bias as its share;
  4. server -> client: the masked ciphertext; the client decrypts and rounds its share.
Communication: 3 messages in sequence (one ring vector, two ciphertexts); no dealer
material. Leaks (statistical, declared in ``he.convert``): the client sees x + t and
W x + t', each element hidden with SIGMA = 28 bits; the server sees ciphertexts and
uniform shares only.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa
import torch

from he import convert
from he.keys import from_bytes, to_bytes
from he.matvec import EncodedMatrix, block, default_baby, encrypt_vector, matvec, replicate


def geometry(w_shape, tokens: int, slots: int):
    """(d, b, output slot positions) of a layer's product for ``tokens`` rows."""
    m, n = w_shape
    d = max(m, n)
    b = default_baby(d)
    if block(d, b) * tokens > slots:
        raise ValueError(f"he: {tokens} rows of a {m}x{n} layer do not fit one ciphertext "
                         f"({block(d, b) * tokens} > {slots} slots)")
    pos = np.concatenate([t * block(d, b) + np.arange(m) for t in range(tokens)])
    return d, b, pos


def send_ct(channel, tag, ct):
    channel.send(tag, torch.frombuffer(bytearray(to_bytes(ct)), dtype=torch.uint8))


def recv_ct(channel, tag, context):
    data = channel.recv(tag)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError(f"he: {tag} must be serialised ciphertext bytes")
    return from_bytes(sa.Ciphertext, context, bytes(data.numpy()), f"ciphertext {tag}")


def client_linear(party, keys, x_c: torch.Tensor, w_shape, scope: str) -> torch.Tensor:
    f = party.frac_bits
    ch = party.channel
    tokens = x_c.shape[0]
    d, b, pos = geometry(w_shape, tokens, keys.params.slots)
    masked = ch.recv(f"{scope}.he.masked")
    if tuple(masked.shape) != tuple(x_c.shape) or masked.dtype != torch.int64:
        raise ValueError(f"he: masked share of shape {tuple(masked.shape)}, expected "
                         f"{tuple(x_c.shape)}")
    ct = convert.shares_to_ckks_client(keys, x_c, masked, f,
                                       lambda z: encrypt_vector(keys, z, d, b))
    send_ct(ch, f"{scope}.he.input", ct)
    out = recv_ct(ch, f"{scope}.he.output", keys.context)
    return convert.ckks_to_shares_client(keys, out, pos, f).reshape(tokens, w_shape[0])


def server_linear(party, server_keys, x_s: torch.Tensor, mat: EncodedMatrix, bias,
                  scope: str) -> torch.Tensor:
    f = party.frac_bits
    ch = party.channel
    tokens = x_s.shape[0]
    d, b, pos = geometry((mat.m, mat.n), tokens, server_keys.params.slots)
    masked, r = convert.shares_to_ckks_server_mask(x_s, f)
    ch.send(f"{scope}.he.masked", masked)
    ct = recv_ct(ch, f"{scope}.he.input", server_keys.context)
    ct = convert.shares_to_ckks_server_unmask(
        server_keys, ct, r, f, lambda v: replicate(v, d, b, server_keys.params.slots))
    out, share = convert.ckks_to_shares_server(server_keys, matvec(server_keys, ct, mat), pos, f)
    send_ct(ch, f"{scope}.he.output", out)
    share = share.reshape(tokens, mat.m)
    return share if bias is None else share + bias

