"""Real dealer, server and client processes over gRPC with mutual TLS on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from benchmarks.launch import REPO, Deployment
from benchmarks.sessions import ERROR_BUDGET
from client.api import PrivateInference
from client.reference import plaintext_forward
from models.digits import as_model_input, load_split
from models.registry import get_model
from protocols import tls
from protocols.channel import PeerError
from protocols.config import Config, FixedPointConfig, OutputConfig
from protocols.session import HandshakeError

MODEL = "digits-mlp"
# these tests compare logits: Deployment starts a classifier's server with
# output.policy=full (the default policy reveals only the label), the clients ask the same
FULL = Config(output=OutputConfig("full"))
FULL_ARGS = ["--set", "output.policy=full"]


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    work = tmp_path_factory.mktemp("dep")
    with Deployment(MODEL, ["mpc", "plaintext"], certs=work / "certs", workdir=work) as d:
        yield d


@pytest.fixture(scope="module")
def data():
    spec = get_model(MODEL)
    _, X_test, _, y_test = load_split()
    return spec, spec.load_weights(), [as_model_input(spec, X_test[i:i + 1]) for i in range(8)]


def session(dep, tmp_path, protocol="mpc", **kw):
    kw.setdefault("inferences", 1)
    kw.setdefault("config", FULL)
    return PrivateInference(model=MODEL, protocol=protocol, server=dep.server_address,
                            dealer=dep.dealer_address, tls=dep.client_tls(),
                            store_root=tmp_path / "cstore", **kw)


def test_mpc_over_grpc_matches_plaintext_with_exact_costs(dep, data, tmp_path):
    spec, weights, xs = data
    with session(dep, tmp_path, inferences=len(xs)) as s:
        s.offline()
        ys = [s.infer(x) for x in xs]
    rec = s.record()
    for x, y in zip(xs, ys):
        ref, _ = plaintext_forward(spec, weights, x, repeats=1)
        assert (y - ref).abs().max().item() < ERROR_BUDGET[MODEL]
        assert y.argmax().item() == ref.argmax().item()
    # MLP, batch 1: fc1 open 64, trunc 64, square open 64, trunc 64, fc2 open 64, trunc 10
    client_elems = 64 + 64 + 64 + 64 + 64 + 10
    assert rec["online"]["bytes_sent"] == client_elems * 8
    assert rec["online"]["bytes_received"] == (client_elems + 10) * 8  # + server's output share
    assert rec["online"]["rounds"] == 7
    assert rec["inferences_per_session"] == len(xs)
    assert rec["dealer"] == "separate-process"
    server = rec["parties"]["server"]
    assert server["online"]["bytes_sent"] == rec["online"]["bytes_received"] * len(xs)
    # the client received the masked weights (64*64 + 10*64 elements) and a 16-byte seed
    assert rec["offline"]["bytes_received"] >= (64 * 64 + 10 * 64) * 8 + 16
    assert rec["client_storage_bytes"] >= (64 * 64 + 10 * 64) * 8
    assert [r["to"] for r in rec["reveals"]] == ["client"] * len(xs)


def test_plaintext_protocol_declares_its_leak(dep, data, tmp_path):
    _, _, xs = data
    with session(dep, tmp_path, protocol="plaintext") as s:
        s.offline()
        s.infer(xs[0])
    reveals = s.record()["reveals"]
    assert {"to": "server", "tag": "plain.input"}.items() <= reveals[0].items()


def test_plaintext_client_refused_by_mtls_server(dep, tmp_path):
    s = PrivateInference(model=MODEL, protocol="mpc", server=dep.server_address,
                         dealer=dep.dealer_address, tls=None, store_root=tmp_path,
                         connect_timeout=3)
    with pytest.raises(ConnectionError):
        s.connect()


def test_other_ca_client_refused(dep, tmp_path):
    other = tls.make_certs(tmp_path / "other", ca_name="intruder-ca")
    s = PrivateInference(model=MODEL, protocol="mpc", server=dep.server_address,
                         dealer=dep.dealer_address, tls=other["client"], store_root=tmp_path,
                         connect_timeout=3)
    with pytest.raises(ConnectionError):
        s.connect()


def test_handshake_mismatch_refused_naming_both_values(dep, tmp_path):
    cfg = Config(fixed=FixedPointConfig(frac_bits=18), output=OutputConfig("full"))
    s = session(dep, tmp_path, config=cfg)
    with pytest.raises(HandshakeError) as err:
        s.connect()
    msg = str(err.value)
    assert "config digest" in msg
    assert cfg.digest() in msg and FULL.digest() in msg


def test_dealer_gives_material_only_to_the_certified_role(dep, tmp_path):
    from protocols.grpc_link import open_stream
    from protocols.metering import Meter
    from protocols.wire import pinfer_pb2_grpc as rpc
    from protocols.endpoints import dial

    files = dep.client_tls()
    ch = dial(dep.dealer_address, files, Config().transport)
    try:
        link = open_stream(rpc.DealerStub(ch).Session, Meter("client"), link="dealer",
                           session_id="forged", transport=Config().transport)
        link.send_json("dealer.request", {"session": "forged", "role": "server",
                                          "frac_bits": 16,
                                          "needs": {"items": [], "constants": [],
                                                    "inferences": 1}})
        with pytest.raises(PeerError, match="certificate of role 'client' asked for 'server'"):
            link.recv("dealer.seed")
    finally:
        ch.close()


def test_cli_writes_a_record(dep, tmp_path):
    out = tmp_path / "rec.json"
    cmd = [sys.executable, "-m", "client", "--model", MODEL, "--protocol", "mpc",
           "--server", dep.server_address, "--dealer", dep.dealer_address, "--index", "17",
           "--certs", str(dep.certs), "--store", str(tmp_path / "s"), "--json", str(out),
           *FULL_ARGS]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "prediction:" in res.stdout and "online" in res.stdout
    rec = json.loads(out.read_text())
    for key in ("model", "protocol", "offline", "online", "parties", "total_bytes",
                "client_storage_bytes", "inferences_per_session", "plaintext_seconds",
                "fidelity", "dealer", "threads", "config_digest"):
        assert key in rec, key
    for key in ("seconds", "bytes_sent", "bytes_received", "rounds"):
        assert key in rec["online"] and key in rec["offline"]
    assert rec["fidelity"]["top1_agree"] is True
    assert rec["fidelity"]["max_abs_error"] < ERROR_BUDGET[MODEL]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_vanished_or_frozen_server_detected_within_seconds(tmp_path, data, sig):
    _, _, xs = data
    with Deployment(MODEL, ["mpc"], certs=tmp_path / "certs", workdir=tmp_path) as d:
        s = PrivateInference(model=MODEL, protocol="mpc", server=d.server_address,
                             dealer=d.dealer_address, tls=d.client_tls(), inferences=2,
                             store_root=tmp_path / "cstore", config=FULL)
        s.connect()
        s.offline()
        s.infer(xs[0])
        server = d.proc("server").popen
        os.kill(server.pid, sig)
        try:
            t0 = time.monotonic()
            with pytest.raises(PeerError):
                s.infer(xs[1])
            assert time.monotonic() - t0 < 10
            # the failed session burned the client's material
            assert not any((tmp_path / "cstore").iterdir())
        finally:
            if sig == signal.SIGSTOP:
                os.kill(server.pid, signal.SIGCONT)


def test_bad_input_is_refused_and_the_session_goes_on(dep, data, tmp_path):
    spec, weights, xs = data
    with session(dep, tmp_path, inferences=2) as s:
        s.offline()
        with pytest.raises(ValueError, match="input shape"):
            s.infer(torch.zeros(1, 65, dtype=torch.float64))
        with pytest.raises(ValueError, match="NaN"):
            s.infer(torch.full((1, 64), float("nan"), dtype=torch.float64))
        with pytest.raises(TypeError, match="floating point"):
            s.infer(torch.zeros(1, 64, dtype=torch.int64))
        y = s.infer(xs[0])                      # still in step with the server
    ref, _ = plaintext_forward(spec, weights, xs[0], repeats=1)
    assert (y - ref).abs().max().item() < ERROR_BUDGET[MODEL]


def test_decoder_cli_generates_privately_over_grpc(tmp_path):
    """tiny-gpt through real processes: the retrieval answer comes back, the tokens agree
    with plaintext greedy, and the record carries per-token decode figures."""
    out = tmp_path / "rec.json"
    with Deployment("tiny-gpt", ["mpc"], certs=tmp_path / "certs", workdir=tmp_path) as d:
        cmd = [sys.executable, "-m", "client", "--model", "tiny-gpt", "--protocol", "mpc",
               "--server", d.server_address, "--dealer", d.dealer_address, "--certs",
               str(d.certs), "--store", str(tmp_path / "s"), "--retrieval", "20", "--seed", "2",
               "--max-new-tokens", "3", "--json", str(out)]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rec = json.loads(out.read_text())
    first = rec["fidelity"]["plaintext_tokens"][0]
    assert f"expected answer: {first}" in res.stdout      # the model answers this one right
    assert rec["fidelity"]["top1_agree"] == 1.0
    assert rec["params"]["context"] == 32 and rec["params"]["new_tokens"] == 3
    assert [(r["to"], r["tag"]) for r in rec["reveals"]] == [("client", "token")] * 3
    dec = rec["decode"]["decode"]
    assert dec["rounds"] > 0 and dec["bytes"] > 0 and dec["seconds"] > 0
    assert rec["decode"]["prefill"]["bytes"] > 10 * dec["bytes"]


@pytest.mark.parametrize("protocol,rounds", [("he", 7), ("hybrid", 6)])
def test_he_protocols_over_grpc(tmp_path, protocol, rounds):
    """``he`` (CKKS linear layers) and ``hybrid`` (BFV masks offline, one masked vector per
    linear layer online) between real processes, with 2PC squares."""
    with Deployment(MODEL, [protocol], certs=tmp_path / "certs", workdir=tmp_path) as d:
        cmd = [sys.executable, "-m", "client", "--model", MODEL, "--protocol", protocol,
               "--server", d.server_address, "--dealer", d.dealer_address, "--index", "17",
               "--certs", str(d.certs), "--store", str(tmp_path / "s"), "--json",
               str(tmp_path / "rec.json")] + FULL_ARGS
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["fidelity"]["top1_agree"] is True
    assert rec["fidelity"]["max_abs_error"] < ERROR_BUDGET[MODEL]
    assert rec["online"]["rounds"] == rounds and rec["offline"]["bytes_sent"] > 1_000_000
    assert rec["dealer"] == "separate-process" and "linear layers" in rec["dealer_for"]


def test_ee_owner_host_and_client_over_grpc(tmp_path):
    """The owner makes a deployment; the host serves only its transformed weights; a client
    with the key gets plaintext's embedding; a client with another deployment's key is
    refused with a clear error; a host without a deployment refuses to serve ee."""
    key, other = tmp_path / "client.key", tmp_path / "other.key"
    for d, k in ((tmp_path / "deploy", key), (tmp_path / "deploy2", other)):
        res = subprocess.run([sys.executable, "-m", "server.ee_owner", "--model", "minilm",
                              "--host-dir", str(d), "--client-key", str(k)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    bad = subprocess.run([sys.executable, "-m", "server", "--model", "minilm", "--protocol",
                          "ee", "--insecure"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "--ee-deployment" in bad.stderr
    with Deployment("minilm", ["ee"], certs=tmp_path / "certs", workdir=tmp_path,
                    extra_server_args=["--ee-deployment", str(tmp_path / "deploy")]) as d:
        base = [sys.executable, "-m", "client", "--model", "minilm", "--protocol", "ee",
                "--server", d.server_address, "--certs", str(d.certs), "--text",
                "the host runs a transformed model"]
        ok = subprocess.run(base + ["--ee-key", str(key), "--json", str(tmp_path / "r.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
        wrong = subprocess.run(base + ["--ee-key", str(other)], cwd=REPO, capture_output=True,
                               text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["fidelity"]["max_abs_error"] < 1e-4 and rec["fidelity"]["cosine"] > 0.999999
    assert rec["dealer"] in ("none", "") and "dealer_for" not in rec
    assert wrong.returncode == 1 and "the host serves deployment" in wrong.stderr


def test_sigterm_lets_the_session_in_flight_finish_and_refuses_new_ones(tmp_path, data):
    """Graceful shutdown: an online inference running when the server gets SIGTERM
    completes correctly; a client that arrives afterwards gets a clear error; the server
    exits within its grace period and says how many sessions it finished."""
    spec, weights, xs = data
    with Deployment(MODEL, ["he"], certs=tmp_path / "certs", workdir=tmp_path) as d:
        s = PrivateInference(model=MODEL, protocol="he", server=d.server_address,
                             dealer=d.dealer_address, tls=d.client_tls(), inferences=1,
                             store_root=tmp_path / "cstore", config=FULL)
        s.connect()
        s.offline()
        server = d.proc("server").popen
        threading.Timer(0.1, lambda: os.kill(server.pid, signal.SIGTERM)).start()
        y = s.infer(xs[0])                              # he takes ~0.3 s online
        s.close()
        ref, _ = plaintext_forward(spec, weights, xs[0], repeats=1)
        assert (y - ref).abs().max().item() < ERROR_BUDGET[MODEL]
        late = PrivateInference(model=MODEL, protocol="he", server=d.server_address,
                                dealer=d.dealer_address, tls=d.client_tls(),
                                store_root=tmp_path / "late", connect_timeout=3, config=FULL)
        with pytest.raises((ConnectionError, PeerError, HandshakeError)):
            late.connect()
        server.wait(timeout=15)
        assert "1 sessions done" in d.proc("server").output()
