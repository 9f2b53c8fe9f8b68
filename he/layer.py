"""A linear layer with the server's weights on shares, computed under CKKS (``he``).

Input: additive ring shares x = x_c + x_s (R, n); rows are packed side by side, as many
per ciphertext as fit (``geometry``), in ceil(R / per_ct) ciphertexts.
  1. server -> client: x_s + r (ring), r a bounded mask (``he.convert``);
  2. client -> server: Enc(x + t) per group of rows, t = r / 2^f (it decodes x + t from
     its share);
  3. the server subtracts t under encryption, multiplies by W (BSGS, ``he.matvec``), masks
     and re-randomises each result (``he.convert``), and keeps -r' + bias as its share;
  4. server -> client: the masked ciphertexts; the client decrypts and rounds its share.
Communication: 3 messages in sequence (one ring vector, then the ciphertexts each way);
no dealer material. Leaks (statistical, declared in ``he.convert``): the client sees
x + t and W x + t', each element hidden with SIGMA = 28 bits; the server sees
ciphertexts and uniform shares only.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa
import torch

from he import convert
from he.keys import from_bytes, to_bytes
from he.matvec import EncodedMatrix, block, default_baby, encrypt_vector, matvec, replicate


def geometry(w_shape, slots: int):
    """(d, b, rows per ciphertext) of a layer's product."""
    m, n = w_shape
    d = max(m, n)
    b = default_baby(d)
    per_ct = slots // block(d, b)
    if per_ct < 1:
        raise ValueError(f"he: a {m}x{n} layer needs {block(d, b)} slots per row; the "
                         f"parameter set has {slots}")
    return d, b, per_ct


def positions(m: int, d: int, b: int, rows: int) -> np.ndarray:
    """Slot positions of the outputs of ``rows`` packed rows."""
    return np.concatenate([t * block(d, b) + np.arange(m) for t in range(rows)])


def chunks(rows: int, per_ct: int) -> list[slice]:
    return [slice(i, min(i + per_ct, rows)) for i in range(0, rows, per_ct)]


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
    d, b, per_ct = geometry(w_shape, keys.params.slots)
    masked = ch.recv(f"{scope}.he.masked")
    if tuple(masked.shape) != tuple(x_c.shape) or masked.dtype != torch.int64:
        raise ValueError(f"he: masked share of shape {tuple(masked.shape)}, expected "
                         f"{tuple(x_c.shape)}")
    parts = chunks(x_c.shape[0], per_ct)
    for i, rows in enumerate(parts):
        ct = convert.shares_to_ckks_client(keys, x_c[rows], masked[rows], f,
                                           lambda z: encrypt_vector(keys, z, d, b))
        send_ct(ch, f"{scope}.he.input.{i}", ct)
    out = []
    for i, rows in enumerate(parts):
        ct = recv_ct(ch, f"{scope}.he.output.{i}", keys.context)
        k = rows.stop - rows.start
        out.append(convert.ckks_to_shares_client(keys, ct, positions(w_shape[0], d, b, k), f)
                   .reshape(k, w_shape[0]))
    return torch.cat(out)


def server_linear(party, server_keys, x_s: torch.Tensor, mat: EncodedMatrix, bias,
                  scope: str) -> torch.Tensor:
    f = party.frac_bits
    ch = party.channel
    d, b, per_ct = geometry((mat.m, mat.n), server_keys.params.slots)
    masked, r = convert.shares_to_ckks_server_mask(x_s, f)
    ch.send(f"{scope}.he.masked", masked)
    parts = chunks(x_s.shape[0], per_ct)
    cts = [recv_ct(ch, f"{scope}.he.input.{i}", server_keys.context) for i in range(len(parts))]
    shares = []
    for i, (rows, ct) in enumerate(zip(parts, cts)):
        ct = convert.shares_to_ckks_server_unmask(
            server_keys, ct, r[rows], f, lambda v: replicate(v, d, b, server_keys.params.slots))
        k = rows.stop - rows.start
        out, share = convert.ckks_to_shares_server(server_keys, matvec(server_keys, ct, mat),
                                                   positions(mat.m, d, b, k), f)
        send_ct(ch, f"{scope}.he.output.{i}", out)
        shares.append(share.reshape(k, mat.m))
    share = torch.cat(shares)
    return share if bias is None else share + bias
