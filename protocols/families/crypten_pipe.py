"""Messages between a ``crypten`` role and its CrypTen worker process, over a pipe.

One message: a 4-byte big-endian header length, a JSON header (``{"op": ..., ...}``; with
a tensor, also ``dtype`` and ``shape``), then the tensor's raw little-endian bytes. No
pickle: the worker is our own child, but the format is checked all the same (unknown
dtype, oversized header, shape and body that disagree, a pipe that closes mid-message
all raise ``PipeError`` naming the problem).
"""

from __future__ import annotations

import json
import math
import select
import struct

import numpy as np
import torch

DTYPES = {"int64": torch.int64, "float64": torch.float64, "float32": torch.float32,
          "uint8": torch.uint8, "bool": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 1 << 16
MAX_BODY = 1 << 34


class PipeError(RuntimeError):
    """The worker pipe closed, timed out or carried a malformed message."""


def write_msg(f, header: dict, tensor: torch.Tensor | None = None) -> None:
    head = dict(header)
    body = b""
    if tensor is not None:
        if tensor.dtype not in NAMES:
            raise PipeError(f"cannot pass dtype {tensor.dtype} to the worker")
        t = tensor.detach().to("cpu").contiguous()
        head.update(dtype=NAMES[t.dtype], shape=list(t.shape))
        body = t.numpy().tobytes() if t.numel() else b""
    raw = json.dumps(head).encode()
    f.write(struct.pack(">I", len(raw)) + raw)
    if body:
        f.write(body)
    f.flush()


def _read_exact(f, n: int, what: str) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise PipeError(f"worker pipe closed after {got} of {n} bytes of {what}")
        got += k
    return buf


def read_msg(f, timeout: float | None = None) -> tuple[dict, torch.Tensor | None]:
    """The next message; waits at most ``timeout`` seconds for it to start."""
    if timeout is not None:
        ready, _, _ = select.select([f], [], [], timeout)
        if not ready:
            raise PipeError(f"no message from the worker within {timeout:g} s")
    (n,) = struct.unpack(">I", bytes(_read_exact(f, 4, "a header length")))
    if n > MAX_HEADER:
        raise PipeError(f"worker header of {n} bytes exceeds {MAX_HEADER}")
    try:
        head = json.loads(bytes(_read_exact(f, n, "a header")).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipeError(f"worker header is not JSON: {exc}") from None
    if not isinstance(head, dict) or not isinstance(head.get("op"), str):
        raise PipeError(f"worker header without an op: {head!r}")
    if "dtype" not in head:
        return head, None
    dtype, shape = DTYPES.get(head["dtype"]), head.get("shape")
    if dtype is None or not isinstance(shape, list) or \
            not all(isinstance(s, int) and s >= 0 for s in shape):
        raise PipeError(f"bad tensor header {head!r}")
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if size > MAX_BODY:
        raise PipeError(f"worker tensor of {size} bytes exceeds {MAX_BODY}")
    body = _read_exact(f, size, f"a {head['dtype']} {shape} body") if size else bytearray()
    np_dtype = np.dtype(str(dtype).removeprefix("torch.")) if dtype != torch.bool else np.bool_
    array = np.frombuffer(body, dtype=np_dtype).reshape(shape) if size else \
        np.zeros(shape, dtype=np_dtype)
    return head, torch.from_numpy(array.copy() if not array.flags.writeable else array)
