"""Typed configuration: frozen dataclasses, TOML files and checked ``--set`` overrides.

Only the fields that change the protocol's arithmetic go into the digest that both parties
compare in the handshake (``Config.digest``); local settings (threads, timeouts, paths) do
not, so two machines may tune them independently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value that is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class FixedPointConfig:
    """Fixed point in Z_2^64: value = raw / 2^frac_bits."""

    frac_bits: int = 16

    def __post_init__(self):
        if not 8 <= self.frac_bits <= 30:
            raise ConfigError(f"fixed.frac_bits={self.frac_bits} outside [8, 30]")


@dataclass(frozen=True)
class TransportConfig:
    """Local network settings (not part of the digest)."""

    recv_timeout_s: float = 120.0    # per receive on a session stream
    rpc_deadline_s: float = 15.0     # unary calls (handshake)
    keepalive_ms: int = 1000         # ping interval and ping timeout: ~2 s to detect a dead peer
    max_chunk_bytes: int = 2 * 1024 * 1024

    def __post_init__(self):
        if self.recv_timeout_s <= 0 or self.rpc_deadline_s <= 0:
            raise ConfigError("transport timeouts must be positive")
        if not 100 <= self.keepalive_ms <= 60_000:
            raise ConfigError(f"transport.keepalive_ms={self.keepalive_ms} outside [100, 60000]")
        if not 1024 <= self.max_chunk_bytes <= 3 * 1024 * 1024:
            raise ConfigError("transport.max_chunk_bytes must be within [1 KiB, 3 MiB]")


@dataclass(frozen=True)
class Config:
    fixed: FixedPointConfig = field(default_factory=FixedPointConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    threads: int = 1                 # torch threads per party

    def digest(self) -> str:
        """Digest of what both parties must agree on (arithmetic, not local tuning)."""
        agreed = {"fixed": dataclasses.asdict(self.fixed)}
        return hashlib.sha256(json.dumps(agreed, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: list[str]) -> "Config":
        """Apply ``section.name=value`` strings; unknown names and bad types raise."""
        data = dataclasses.asdict(self)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form name=value")
            name, raw = item.split("=", 1)
            _assign(data, name.strip(), _parse(raw.strip()))
        return from_dict(data)


def _parse(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _assign(data: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"unknown config section {p!r} in {dotted!r}")
        node = node[p]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise ConfigError(f"unknown config field {dotted!r}")
    old = node[parts[-1]]
    if isinstance(old, bool) or not isinstance(value, (type(old), int)) or (
            isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float)):
        raise ConfigError(f"{dotted}={value!r}: expected {type(old).__name__}")
    node[parts[-1]] = type(old)(value)


def from_dict(data: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown config fields: {sorted(unknown)}")
    try:
        return Config(
            fixed=FixedPointConfig(**data.get("fixed", {})),
            transport=TransportConfig(**data.get("transport", {})),
            threads=int(data.get("threads", 1)),
        )
    except TypeError as exc:
        raise ConfigError(f"bad config: {exc}") from None


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a TOML file if given, then ``--set`` overrides."""
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                cfg = from_dict(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return cfg.with_overrides(overrides or [])
