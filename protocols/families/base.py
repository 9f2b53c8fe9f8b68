"""Protocol family interface: a client role and a server role that run in lockstep.

The processes (``client``, ``server``) and the in-process tests drive a family the same
way:

  client: role = family.client(ctx);  role.offline();  role.online(x) ...;  role.close()
  server: role = family.server(ctx, weights); role.offline(); role.online() ...; role.close()

``ctx`` carries the model spec, the configuration, the channel to the peer, the meter, the
session id, the public input shape, how many inferences the session will serve, where the
store lives and how to reach the dealer. The client's ``online`` takes its private input
and returns the output; the server's ``online`` takes nothing (its weights are bound).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from protocols.channel import Channel
from protocols.config import Config
from protocols.metering import Meter


@dataclass
class RoleContext:
    spec: object                           # models.spec.ModelSpec (public architecture)
    config: Config
    channel: Channel
    meter: Meter
    session_id: str
    input_shape: tuple[int, ...]           # with the batch dimension
    inferences: int = 1
    store_root: Path | None = None
    dealer_connect: Callable[[], Channel] | None = None   # opens a metered link to the dealer
    new_tokens: int = 0                    # decoders: tokens generated per inference (public)
    ee_key: object | None = None           # ee, client: the deployment's key
    ee_deployment: str | None = None       # ee, host: the deployment id it serves


class Role(abc.ABC):
    def __init__(self, ctx: RoleContext):
        self.ctx = ctx

    @abc.abstractmethod
    def offline(self) -> None:
        """Input-independent preprocessing for ``ctx.inferences`` inferences."""

    def storage_bytes(self) -> int:
        """Bytes of material this party holds now."""
        return 0

    def peak_storage_bytes(self) -> int:
        return self.storage_bytes()

    def close(self, failed: bool = False) -> None:
        """Release material; a failed session burns it."""


class ClientRole(Role):
    @abc.abstractmethod
    def online(self, x: torch.Tensor) -> torch.Tensor:
        """Run one private inference on input ``x`` (float, ``ctx.input_shape``)."""


class ServerRole(Role):
    @abc.abstractmethod
    def online(self) -> None:
        """Serve one private inference."""


class Family(abc.ABC):
    name: str
    uses_dealer: bool
    description: str
    dealer_for: str = ""          # what the dealer's material serves (records)

    @property
    def dealer_label(self) -> str:
        """How correlated randomness is made, as records say it (``dealer``)."""
        return "separate-process" if self.uses_dealer else "none"

    @abc.abstractmethod
    def client(self, ctx: RoleContext) -> ClientRole: ...

    @abc.abstractmethod
    def server(self, ctx: RoleContext, weights: dict[str, torch.Tensor]) -> ServerRole: ...



def check_input(ctx: RoleContext, x: torch.Tensor) -> torch.Tensor:
    """Input checks every family shares: dtype, shape, finite values, the model's input
    range (refused, never clipped: a value beyond it could overflow in the ring)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be floating point, got {x.dtype}")
    if tuple(x.shape) != tuple(ctx.input_shape):
        raise ValueError(f"input shape {tuple(x.shape)} does not match the session's "
                         f"{tuple(ctx.input_shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("input holds NaN or inf")
    bounds = getattr(ctx.spec, "input_range", None)
    if bounds is not None and x.numel():
        lo, hi = bounds
        bad = (x < lo) | (x > hi)
        if bool(bad.any()):
            raise ValueError(f"input value {x[bad].flatten()[0].item():.6g} outside the model's "
                             f"input range [{lo:g}, {hi:g}] ({int(bad.sum())} values); refused, "
                             "not clipped or wrapped")
    if getattr(ctx.spec, "decoder", None) is not None:
        ctx.spec.decoder.prompt_length(x)
    return x.to(torch.float64)
