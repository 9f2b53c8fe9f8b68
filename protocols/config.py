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


COMPARE_METHODS = ("fss", "bitdecomp")


@dataclass(frozen=True)
class CompareConfig:
    """Secure comparisons. ``bits``: inputs must satisfy |x| < 2^(bits - 1) ring units
    (2^(bits - 1 - frac_bits) in value); fewer bits make smaller FSS keys.
    ``relu_drop_bits`` > 0 makes ReLU Circa-style stochastic (sign test on truncated
    values; faults only where |x| < 2^drop ulps; fss only)."""

    method: str = "fss"
    bits: int = 40
    relu_drop_bits: int = 0

    def __post_init__(self):
        if self.method not in COMPARE_METHODS:
            raise ConfigError(f"compare.method={self.method!r}; expected one of {COMPARE_METHODS}")
        if not 8 <= self.bits <= 64:
            raise ConfigError(f"compare.bits={self.bits} outside [8, 64]")
        if not 0 <= self.relu_drop_bits <= self.bits - 4:
            raise ConfigError(f"compare.relu_drop_bits={self.relu_drop_bits} outside "
                              f"[0, bits - 4]")
        if self.relu_drop_bits and self.method != "fss":
            raise ConfigError("compare.relu_drop_bits (Circa ReLU) needs compare.method='fss'")


KV_METHODS = ("full", "streamingllm", "h2o", "mpcache")


@dataclass(frozen=True)
class KvConfig:
    """KV-cache eviction for decoders (``models.kv_eviction``); budgets are public."""

    method: str = "full"
    budget: int = 64             # prompt rows a decode step attends to (sink + picks + last)
    sinks: int = 16              # streamingllm: first rows always kept
    window: int = 16             # h2o: last prompt rows always kept
    cluster: int = 16            # mpcache: rows per (fine) cluster
    coarse: int = 4              # mpcache: fine clusters per coarse cluster (1: one level)
    coarse_keep: int = 4         # mpcache: coarse clusters kept before refinement
    score: str = "bound"         # mpcache: "bound" (sum_d max(q_d max_d, q_d min_d)) or
    alpha: float = 0.6           #   "alpha" (q . (alpha max + (1 - alpha) min), the paper's)
    static_budget: int = 0       # mpcache: prompt rows kept by look-once static eviction (0: off)
    static_queries: float = 0.2  # mpcache: fraction of the last prompt queries scoring rows
    share: int = 1               # mpcache: adjacent layers sharing one dynamic selection

    def __post_init__(self):
        if self.method not in KV_METHODS:
            raise ConfigError(f"kv.method={self.method!r}; expected one of {KV_METHODS}")
        c = self.cluster
        if min(self.budget, self.sinks, self.window, c, self.share, self.coarse,
               self.coarse_keep) < 1 or self.static_budget < 0:
            raise ConfigError("kv budgets, sinks, window, cluster, coarse, coarse_keep and share "
                              "must be >= 1 (static_budget >= 0)")
        if self.score not in ("bound", "alpha"):
            raise ConfigError(f"kv.score={self.score!r}; expected 'bound' or 'alpha'")
        if not 0 < self.static_queries <= 1 or not 0 <= self.alpha <= 1:
            raise ConfigError("kv.static_queries must lie in (0, 1] and kv.alpha in [0, 1]")
        if self.method == "mpcache":
            picks = self.budget // c - 2
            if self.budget % c or picks < 1 or self.static_budget % (c * self.coarse):
                raise ConfigError(f"mpcache needs kv.budget ({self.budget}) a multiple of "
                                  f"kv.cluster ({c}) of at least 3 clusters, and kv.static_budget "
                                  f"({self.static_budget}) a multiple of cluster * coarse")
            if self.coarse > 1 and picks > self.coarse_keep * self.coarse:
                raise ConfigError(f"mpcache picks {picks} fine clusters but refines only "
                                  f"{self.coarse_keep} x {self.coarse}")
        if self.method == "streamingllm" and self.sinks >= self.budget:
            raise ConfigError(f"streamingllm needs kv.sinks ({self.sinks}) < kv.budget ({self.budget})")
        if self.method == "h2o" and self.window >= self.budget:
            raise ConfigError(f"h2o needs kv.window ({self.window}) < kv.budget ({self.budget})")


CRYPTEN_GELU = ("tanh", "sigmoid")


@dataclass(frozen=True)
class CryptenConfig:
    """The ``crypten`` peer baseline. ``gelu``: "tanh" (the tanh form, input clamped to
    [-8, 8]: the accurate, pinned variant) or "sigmoid" (x sigmoid(1.702 x): cheaper,
    less accurate; reported as a second row)."""

    gelu: str = "tanh"

    def __post_init__(self):
        if self.gelu not in CRYPTEN_GELU:
            raise ConfigError(f"crypten.gelu={self.gelu!r}; expected one of {CRYPTEN_GELU}")


OUTPUT_POLICIES = ("auto", "label", "topk", "full")


@dataclass(frozen=True)
class OutputConfig:
    """What the client may learn of each inference (``models.output_policy``): "label" (a
    one-hot of the argmax), "topk" (the k one-hot rows of the k largest, in order: the
    indices, not the scores), "full" (logits or embedding) or "auto" (what the model's task
    needs: a classifier's label, an embedding's vector, a decoder's tokens). Computed
    inside the protocol, before the reveal; both parties must agree (in the digest)."""

    policy: str = "auto"
    k: int = 1                   # topk only

    def __post_init__(self):
        if self.policy not in OUTPUT_POLICIES:
            raise ConfigError(f"output.policy={self.policy!r}; expected one of {OUTPUT_POLICIES}")
        if self.k < 1:
            raise ConfigError(f"output.k={self.k} must be >= 1")
        if self.k != 1 and self.policy != "topk":
            raise ConfigError(f"output.k={self.k} applies to output.policy='topk' only, not "
                              f"{self.policy!r}")

    def describe(self) -> str:
        return f"topk:{self.k}" if self.policy == "topk" else self.policy


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
    compare: CompareConfig = field(default_factory=CompareConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    kv: KvConfig = field(default_factory=KvConfig)
    crypten: CryptenConfig = field(default_factory=CryptenConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    threads: int = 1                 # torch threads per party

    def __post_init__(self):
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads={self.threads!r}: expected an integer >= 1")

    def digest(self) -> str:
        """Digest of what both parties must agree on (arithmetic, not local tuning)."""
        agreed = {"fixed": dataclasses.asdict(self.fixed),
                  "compare": dataclasses.asdict(self.compare)}
        if self.kv.method != "full":
            agreed["kv"] = dataclasses.asdict(self.kv)
        if self.crypten != CryptenConfig():
            agreed["crypten"] = dataclasses.asdict(self.crypten)
        if self.output != OutputConfig():
            agreed["output"] = dataclasses.asdict(self.output)
        return hashlib.sha256(json.dumps(agreed, sort_keys=True).encode()).hexdigest()[:16]

    def output_of_digest(self, digest: str, max_k: int = 64) -> OutputConfig | None:
        """The output policy that, with everything else as here, gives ``digest`` (None if
        none does): lets a handshake name both policies rather than two digests."""
        for policy in OUTPUT_POLICIES:
            for k in (range(1, max_k + 1) if policy == "topk" else (1,)):
                out = OutputConfig(policy, k)
                if dataclasses.replace(self, output=out).digest() == digest:
                    return out
        return None

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
    node[parts[-1]] = _typed(dotted, node[parts[-1]], value)


def _typed(name: str, old, value):
    """``value`` converted to the type of the default ``old``; bools and lossy casts refused."""
    kind = type(old)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {kind.__name__}")
    return kind(value)


def _check_types(data: dict, defaults: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config field {name!r}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a section")
            out[key] = _check_types(value, defaults[key], name + ".")
        else:
            out[key] = _typed(name, defaults[key], value)
    return out


def from_dict(data: dict) -> Config:
    data = _check_types(data, dataclasses.asdict(Config()))
    try:
        return Config(
            fixed=FixedPointConfig(**data.get("fixed", {})),
            compare=CompareConfig(**data.get("compare", {})),
            transport=TransportConfig(**data.get("transport", {})),
            kv=KvConfig(**data.get("kv", {})),
            crypten=CryptenConfig(**data.get("crypten", {})),
            output=OutputConfig(**data.get("output", {})),
            threads=data.get("threads", 1),
        )
    except (TypeError, ValueError) as exc:
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
