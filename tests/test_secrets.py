"""Secrets stay secret: PRG seeds never reach a log or an error message, and certificates'
keys never reach a process's output. (No pickle on any path a peer or a user feeds:
``tests/test_layering.py::test_no_pickle_based_loading`` scans the product code.)"""

from __future__ import annotations

import base64
import logging

import pytest
import torch

from mpc import prg
from protocols.channel import PeerError, run_pair
from protocols.registry import get_family
from tests.helpers import make_contexts, run_family


def _forms(seed: bytes) -> list[str]:
    return [seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode().rstrip("="),
            repr(seed)[2:-1], str(list(seed))[1:-1], str(int.from_bytes(seed, "big"))]


def test_prg_seeds_never_reach_logs_or_error_messages(tmp_path, caplog, monkeypatch):
    seeds: list[bytes] = []
    real = prg.new_seed

    def recorded():
        seeds.append(real())
        return seeds[-1]
    monkeypatch.setattr(prg, "new_seed", recorded)
    caplog.set_level(logging.DEBUG)
    from models.registry import get_model
    spec = get_model("digits-mlp")
    weights = spec.load_weights()
    x = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(1, 64)
    texts = []
    for protocol in ("mpc", "hybrid"):                     # dealer seeds; hybrid's own seed
        run_family(get_family(protocol), spec, weights, [x], tmp_path / protocol)
    # a failing session: the server stops after the offline phase
    cctx, sctx, _ = make_contexts(spec, x.shape, tmp_path / "failed", session_id="f1")
    cctx.channel.recv_timeout = 5.0
    fam = get_family("mpc")
    client, server = fam.client(cctx), fam.server(sctx, weights)

    def run_server():
        server.offline()
        sctx.channel.abort("server: stopping on purpose")
        server.close(failed=True)

    def run_client():
        client.offline()
        try:
            client.online(x)
        except PeerError as exc:
            texts.append(str(exc))
            texts.append(repr(exc))
        finally:
            client.close(failed=True)
    run_pair(run_client, run_server)
    assert texts and "stopping on purpose" in texts[0]
    assert len(seeds) >= 3
    text = caplog.text + "\n".join(texts)
    for seed in seeds:
        for form in _forms(seed):
            assert form not in text


def test_process_output_carries_no_key_material(tmp_path):
    from benchmarks.launch import Deployment
    from benchmarks.sessions import run_session
    with Deployment("digits-mlp", ["mpc"], certs=tmp_path / "certs",
                    workdir=tmp_path) as dep:
        x = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(1, 64)
        run_session(dep, "digits-mlp", "mpc", [x], tmp_path)
        logs = "\n".join(p.output() for p in dep.procs)
    assert "listening" in logs                                # we did read the output
    assert "PRIVATE KEY" not in logs
    for key in (tmp_path / "certs").glob("*.key"):
        body = "".join(line for line in key.read_text().splitlines() if "-----" not in line)
        for i in range(0, len(body) - 24, 24):                   # any 24-char stretch
            assert body[i:i + 24] not in logs, key.name
    if not list((tmp_path / "certs").glob("*.key")):
        pytest.fail("no key files found to check")
