"""Model specs: public architecture (layer names, shapes) plus where the weights live.

The architecture digest (names and shapes only) goes into the handshake; the weights
never do. Weights load from safetensors files only (never pickle), checked against the
spec with errors that name the file and the tensor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsError(ValueError):
    """Missing, corrupted or mismatched weights."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]            # one example, without the batch dimension
    params: dict[str, tuple[int, ...]]      # tensor name -> shape
    forward: Callable                       # forward(ops, x) -> output
    weights_file: Path
    task: str = "classification"
    notes: dict = field(default_factory=dict)
    seq_buckets: tuple[int, ...] | None = None  # first input dim may be any of these (public)
    loader: Callable | None = None              # weights from elsewhere than weights_file
    decoder: object | None = None               # autoregressive models: how to generate
    # inputs outside [lo, hi] are refused by name before anything is encoded or sent: a
    # larger value would overflow a fixed-point product and wrap silently in the ring
    input_range: tuple[float, float] | None = None

    def arch_digest(self) -> str:
        public = {"name": self.name, "input": list(self.input_shape),
                  "params": {k: list(v) for k, v in sorted(self.params.items())}}
        return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:16]

    def load_weights(self, path: str | Path | None = None) -> dict[str, torch.Tensor]:
        if self.loader is not None:
            return self.loader(path)
        return load_safetensors(Path(path or self.weights_file), self.params)

    def accepts(self, example_shape: tuple[int, ...]) -> bool:
        """Whether one example of this shape is valid (a bucketed first dim may vary)."""
        want = tuple(self.input_shape)
        if self.seq_buckets and len(example_shape) == len(want) and example_shape[0] in \
                self.seq_buckets:
            return tuple(example_shape[1:]) == want[1:]
        return tuple(example_shape) == want


def load_safetensors(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Load float weights from a safetensors file and check names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsError(f"weights file {path} not found (train it: python -m models.train_digits)")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte header length, then the JSON header; pickle starts 0x80, zip "PK"
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise WeightsError(f"{path} looks like a pickle/zip file; only safetensors are accepted")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WeightsError(f"{path}: missing tensors {missing}, unexpected tensors {extra}")
    out = {}
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise WeightsError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise WeightsError(f"{path}: tensor {name} has dtype {t.dtype}, expected float")
        if not torch.isfinite(t).all():
            raise WeightsError(f"{path}: tensor {name} holds NaN or inf")
        out[name] = t.to(torch.float64)
    return out
