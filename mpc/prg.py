"""AES-128-CTR pseudo-random generator for ring elements (``cryptography``).

``expand(seed, stream, label, shape)`` gives uniform int64 ring elements; each
(stream, label) pair owns a disjoint counter range: the 128-bit initial counter block is
stream (64 bits) || label (8 bits) || 0 (56 bits). Seeds come from ``secrets`` only.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def expand(seed: bytes, stream: int, label: int, shape) -> torch.Tensor:
    """Uniform int64 tensor of ``shape`` from AES-CTR keyed by ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if not (0 <= stream < 2 ** 64 and 0 <= label < 256):
        raise ValueError(f"PRG stream {stream} / label {label} out of range")
    n = math.prod(shape)
    nonce = (stream << 64 | label << 56).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    arr = np.empty(n, dtype=np.int64)
    enc.update_into(bytes(8 * n), memoryview(arr).cast("B"))   # straight into the array
    return torch.from_numpy(arr).reshape(tuple(shape))


def expand_range(seed: bytes, stream: int, label: int, start: int, count: int) -> torch.Tensor:
    """Elements [start, start + count) of the (seed, stream, label) sequence: the same
    values ``expand`` gives at those offsets, without generating the prefix."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if not (0 <= stream < 2 ** 64 and 0 <= label < 256 and 0 <= start < 2 ** 50):
        raise ValueError(f"PRG stream {stream} / label {label} / offset {start} out of range")
    block, skip = divmod(8 * start, 16)
    nonce = (stream << 64 | label << 56 | block).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    data = enc.update(bytes(skip + 8 * count)) + enc.finalize()
    arr = np.frombuffer(data[skip:], dtype="<i8").astype(np.int64)
    return torch.from_numpy(arr)


def uniform_bits(seed: bytes, stream: int, label: int, shape) -> torch.Tensor:
    """Uniform 0/1 int64 tensor (lowest bit of the ring stream)."""
    return expand(seed, stream, label, shape) & 1
