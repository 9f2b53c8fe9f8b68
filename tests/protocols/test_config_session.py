"""Config (defaults, digest, overrides, TOML) and the handshake's refusals."""

from __future__ import annotations

import dataclasses

import pytest

from models.registry import get_model
from protocols import config as C
from protocols.config import Config, ConfigError
from protocols.session import (MAX_BATCH, MAX_INFERENCES, VERSION, HandshakeError,
                               check_hello, make_hello)
from protocols.wire import pinfer_pb2 as pb

# -- config ---------------------------------------------------------------------------------


def test_defaults():
    cfg = Config()
    assert cfg.fixed.frac_bits == 16
    assert cfg.threads == 1
    t = cfg.transport
    assert (t.recv_timeout_s, t.rpc_deadline_s, t.keepalive_ms, t.max_chunk_bytes) == \
        (120.0, 15.0, 1000, 2 * 1024 * 1024)
    assert C.load() == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threads = 2  # type: ignore[misc]


def test_digest_is_stable_and_covers_only_the_arithmetic():
    d = Config().digest()
    assert d == Config().digest() and len(d) == 16 and int(d, 16) >= 0
    assert Config().with_overrides(["fixed.frac_bits=18"]).digest() != d
    assert Config().with_overrides(["fixed.frac_bits=16"]).digest() == d
    local = Config().with_overrides(["threads=8", "transport.recv_timeout_s=3",
                                     "transport.keepalive_ms=500",
                                     "transport.max_chunk_bytes=4096",
                                     "transport.rpc_deadline_s=2.5"])
    assert local != Config() and local.digest() == d


def test_digest_is_pinned():
    # the digest is a wire contract between releases: change this value only on purpose
    assert Config().digest() == "ae281ae152828c93"  # compare settings joined the digest


def test_overrides_parse():
    cfg = Config().with_overrides(["fixed.frac_bits=18", " threads = 4 ",
                                   "transport.recv_timeout_s=5", "transport.rpc_deadline_s=0.5"])
    assert cfg.fixed.frac_bits == 18 and cfg.threads == 4
    assert cfg.transport.recv_timeout_s == 5.0 and isinstance(cfg.transport.recv_timeout_s, float)
    assert cfg.transport.rpc_deadline_s == 0.5
    assert Config().with_overrides([]) == Config()


@pytest.mark.parametrize("item,match", [
    ("fixed.nope=1", "unknown config field 'fixed.nope'"),
    ("nosuch.x=1", "unknown config section 'nosuch'"),
    ("bogus=1", "unknown config field 'bogus'"),
    ("fixed=3", "unknown config field 'fixed'"),
    ("fixed.frac_bits.deeper=3", "unknown config section 'frac_bits'"),
    ("fixed.frac_bits", "not of the form name=value"),
])
def test_unknown_override_raises(item, match):
    with pytest.raises(ConfigError, match=match):
        Config().with_overrides([item])


@pytest.mark.parametrize("item,match", [
    ("fixed.frac_bits=abc", "fixed.frac_bits='abc': expected int"),
    ("fixed.frac_bits=18.5", "expected int"),
    ("fixed.frac_bits=[18]", "expected int"),
    ('threads="2"', "threads='2': expected int"),
    ("transport.keepalive_ms=1e3", "expected int"),
    ("transport.recv_timeout_s=soon", "expected float"),
])
def test_mistyped_override_raises(item, match):
    with pytest.raises(ConfigError, match=match):
        Config().with_overrides([item])


@pytest.mark.parametrize("item,match", [
    ("fixed.frac_bits=7", r"frac_bits=7 outside \[8, 30\]"),
    ("fixed.frac_bits=31", r"frac_bits=31 outside \[8, 30\]"),
    ("transport.recv_timeout_s=0", "timeouts must be positive"),
    ("transport.rpc_deadline_s=-1", "timeouts must be positive"),
    ("transport.keepalive_ms=50", r"keepalive_ms=50 outside"),
    ("transport.keepalive_ms=60001", r"keepalive_ms=60001 outside"),
    ("transport.max_chunk_bytes=1023", "max_chunk_bytes"),
    ("transport.max_chunk_bytes=3145729", "max_chunk_bytes"),
])
def test_out_of_range_override_raises(item, match):
    with pytest.raises(ConfigError, match=match):
        Config().with_overrides([item])


def test_range_edges_are_accepted():
    cfg = Config().with_overrides(["fixed.frac_bits=8", "transport.keepalive_ms=100",
                                   "transport.max_chunk_bytes=1024"])
    assert (cfg.fixed.frac_bits, cfg.transport.keepalive_ms) == (8, 100)
    assert Config().with_overrides(["fixed.frac_bits=30", "transport.keepalive_ms=60000",
                                    "transport.max_chunk_bytes=3145728"]).fixed.frac_bits == 30


def test_toml_load_and_overrides_on_top(tmp_path):
    p = tmp_path / "pinfer.toml"
    p.write_text('threads = 2\n[fixed]\nfrac_bits = 20\n[transport]\nrecv_timeout_s = 3.5\n')
    cfg = C.load(p)
    assert (cfg.threads, cfg.fixed.frac_bits, cfg.transport.recv_timeout_s) == (2, 20, 3.5)
    assert cfg.transport.keepalive_ms == 1000                       # untouched default
    assert C.load(str(p), ["fixed.frac_bits=12"]).fixed.frac_bits == 12
    assert C.load(p).digest() == Config().with_overrides(["fixed.frac_bits=20"]).digest()


@pytest.mark.parametrize("text,match", [
    ("[fixed]\nfrac_bits = 40\n", "outside"),
    ("[fixed]\nbits = 20\n", "unknown config field 'fixed.bits'"),
    ("colour = 'blue'\n", "unknown config field 'colour'"),
    ("fixed = 3\n", "fixed must be a section"),
    ("[transport]\nrecv_timeout_s = 'x'\n", "bad config|recv_timeout_s"),
    ("[fixed\nfrac_bits = 20\n", "pinfer.toml"),
])
def test_bad_toml_raises(tmp_path, text, match):
    p = tmp_path / "pinfer.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        C.load(p)


def test_missing_toml_raises(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(tmp_path / "absent.toml")


@pytest.mark.parametrize("text", [
    "[fixed]\nfrac_bits = 18.5\n",
    "[transport]\nmax_chunk_bytes = 2048.5\n",
    "threads = 2.5\n",
    "threads = 'abc'\n",
])
def test_toml_values_are_type_checked(tmp_path, text):
    p = tmp_path / "pinfer.toml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        C.load(p)


@pytest.mark.parametrize("item", ["threads=0", "threads=-1", "threads=true"])
def test_threads_must_be_a_positive_int(item):
    with pytest.raises(ConfigError):
        Config().with_overrides([item])


# -- handshake ------------------------------------------------------------------------------

SPEC = get_model("digits-mlp")
PROTOCOLS = ["plaintext", "mpc"]
DIGEST = Config().digest()


def hello(**kw):
    args = dict(spec=SPEC, protocol="mpc", config_digest=DIGEST, input_shape=(2, 64),
                inferences=3)
    args.update(kw)
    req = make_hello(**args)
    return pb.HelloRequest.FromString(req.SerializeToString())   # as it crosses the wire


def check(req, **kw):
    args = dict(spec=SPEC, protocols=PROTOCOLS, config_digest=DIGEST)
    args.update(kw)
    return check_hello(req, **args)


def test_matching_hello_is_accepted():
    req = hello()
    assert (req.version, req.model, req.arch_digest) == (VERSION, "digits-mlp",
                                                         SPEC.arch_digest())
    assert check(req) == (2, 64)
    assert check(hello(input_shape=(1, 64), inferences=1)) == (1, 64)
    assert check(hello(input_shape=(MAX_BATCH, 64), inferences=MAX_INFERENCES)) == \
        (MAX_BATCH, 64)


OTHER_ARCH = dataclasses.replace(SPEC, params={**SPEC.params, "fc1.weight": (32, 64),
                                               "fc1.bias": (32,), "fc2.weight": (10, 32)})
OTHER_DIGEST = Config().with_overrides(["fixed.frac_bits=18"]).digest()

MISMATCHES = {
    "version": (dict(version="0.0.9"), {}, ["version mismatch", "'0.0.9'", repr(VERSION)]),
    "protocol": (dict(protocol="he"), {}, ["protocol mismatch", "'he'", "'plaintext,mpc'"]),
    "model": (dict(spec=get_model("digits-cnn"), input_shape=(2, 1, 8, 8)), {},
              ["model mismatch", "'digits-cnn'", "'digits-mlp'"]),
    "arch digest": (dict(spec=OTHER_ARCH), {},
                    ["architecture digest mismatch", repr(OTHER_ARCH.arch_digest()),
                     repr(SPEC.arch_digest())]),
    "config digest": (dict(config_digest=OTHER_DIGEST), {},
                      ["config digest mismatch", repr(OTHER_DIGEST), repr(DIGEST)]),
    "server config": ({}, dict(config_digest=OTHER_DIGEST),
                      ["config digest mismatch", repr(DIGEST), repr(OTHER_DIGEST)]),
    "input width": (dict(input_shape=(2, 65)), {},
                    ["input shape mismatch", "[2, 65]", "['batch', 64]"]),
    "no batch dim": (dict(input_shape=(64,)), {}, ["input shape mismatch", "[64]",
                                                    "['batch', 64]"]),
    "extra dim": (dict(input_shape=(2, 64, 1)), {}, ["input shape mismatch", "[2, 64, 1]"]),
    "batch 0": (dict(input_shape=(0, 64)), {}, ["batch size 0", f"[1, {MAX_BATCH}]"]),
    "batch -1": (dict(input_shape=(-1, 64)), {}, ["batch size -1", f"[1, {MAX_BATCH}]"]),
    "batch too big": (dict(input_shape=(MAX_BATCH + 1, 64)), {},
                      [f"batch size {MAX_BATCH + 1}", f"[1, {MAX_BATCH}]"]),
    "inferences 0": (dict(inferences=0), {}, ["inferences 0", f"[1, {MAX_INFERENCES}]"]),
    "inferences too many": (dict(inferences=MAX_INFERENCES + 1), {},
                            [f"inferences {MAX_INFERENCES + 1}", f"[1, {MAX_INFERENCES}]"]),
}


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_mismatch_is_refused_naming_both_values(name):
    client_kw, server_kw, needles = MISMATCHES[name]
    with pytest.raises(HandshakeError) as exc:
        check(hello(**client_kw), **server_kw)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from {msg!r}"


def test_server_version_is_compared_too():
    with pytest.raises(HandshakeError, match=f"client has {VERSION!r}, server has '9.9.9'"):
        check(hello(), version="9.9.9")


def test_the_first_mismatch_is_reported():
    req = hello(version="0.0.1", protocol="he", config_digest="0" * 16)
    with pytest.raises(HandshakeError, match="^version mismatch"):
        check(req)


def test_hello_carries_no_weights():
    fields = {f.name for f in pb.HelloRequest.DESCRIPTOR.fields}
    assert fields == {"version", "protocol", "config_digest", "arch_digest", "model",
                      "input_shape", "inferences", "new_tokens"}
    # the architecture digest covers names and shapes only
    assert dataclasses.replace(SPEC, weights_file=SPEC.weights_file.with_name("x")) \
        .arch_digest() == SPEC.arch_digest()
