"""Output policy and query budget between real dealer, server and client processes
(gRPC, mutual TLS, loopback): the server's default on a classifier reveals only the label,
full logits need the explicit setting on both sides, and ``--query-budget`` refuses the
query after the N-th per client certificate while other clients go on."""

from __future__ import annotations

import json
import subprocess
import sys

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
from protocols.config import Config, OutputConfig
from protocols.session import HandshakeError, QueryBudgetError

MODEL = "digits-mlp"
BUDGET = 3


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    """The server as an operator starts it: default output policy, a query budget."""
    work = tmp_path_factory.mktemp("policy")
    with Deployment(MODEL, ["mpc", "plaintext"], certs=work / "certs", workdir=work,
                    output_policy=None, extra_server_args=["--query-budget", str(BUDGET)]) as d:
        yield d


@pytest.fixture(scope="module")
def data():
    spec = get_model(MODEL)
    _, X_test, _, y_test = load_split()
    xs = [as_model_input(spec, X_test[i:i + 1]) for i in range(4)]
    logits = torch.cat([plaintext_forward(spec, spec.load_weights(), x, repeats=1)[0]
                        for x in xs])
    return xs, logits


def new_client(dep, tmp_path, name: str) -> tls.TlsFiles:
    """A client certificate of its own (same CA, same common name "client")."""
    return tls.make_certs(tmp_path / name, ca_dir=dep.certs, roles=("client",))["client"]


def session(dep, tmp_path, cert, protocol="mpc", **kw):
    kw.setdefault("inferences", 1)
    return PrivateInference(model=MODEL, protocol=protocol, server=dep.server_address,
                            dealer=dep.dealer_address, tls=cert,
                            store_root=tmp_path / "cstore", **kw)


def run(dep, tmp_path, cert, xs, **kw):
    with session(dep, tmp_path, cert, inferences=len(xs), **kw) as s:
        s.offline()
        ys = [s.infer(x) for x in xs]
    return ys, s.record()


def test_default_policy_reveals_only_the_label(dep, data, tmp_path):
    xs, logits = data
    ys, rec = run(dep, tmp_path, new_client(dep, tmp_path, "a"), xs[:2])
    want = torch.nn.functional.one_hot(logits[:2].argmax(-1), 10).double()
    assert torch.equal(torch.cat(ys), want)
    assert rec["output_policy"] == "label"
    assert [(r["to"], r["tag"], tuple(r["shape"])) for r in rec["reveals"]] == \
        [("client", "output", (1, 10))] * 2


@pytest.mark.parametrize("sets,theirs", [({"policy": "full"}, "'full'"),
                                         ({"policy": "topk", "k": 3}, "'topk:3'")])
def test_other_policy_is_refused_in_the_handshake_naming_both(dep, tmp_path, sets, theirs):
    cfg = Config(output=OutputConfig(**sets))
    s = session(dep, tmp_path, new_client(dep, tmp_path, "b"), config=cfg)
    with pytest.raises(HandshakeError) as err:
        s.connect()
    msg = str(err.value)
    assert "output policy mismatch" in msg and theirs in msg and "'auto'" in msg


def test_full_logits_need_the_explicit_setting_on_both_sides(data, tmp_path):
    xs, logits = data
    with Deployment(MODEL, ["mpc"], certs=tmp_path / "certs", workdir=tmp_path,
                    output_policy="full") as d:
        ys, rec = run(d, tmp_path, d.client_tls(), xs[:1],
                      config=Config(output=OutputConfig("full")))
    assert rec["output_policy"] == "full"
    assert (ys[0] - logits[:1]).abs().max().item() < ERROR_BUDGET[MODEL]
    assert len(ys[0].unique()) == 10                 # logits, not a one-hot


def test_budget_refuses_the_next_query_and_other_clients_go_on(dep, data, tmp_path):
    xs, _ = data
    alice, bob = new_client(dep, tmp_path, "alice"), new_client(dep, tmp_path, "bob")
    run(dep, tmp_path, alice, xs[:2])                          # 2 of 3
    with pytest.raises(QueryBudgetError) as err:               # asks 2, 1 left
        session(dep, tmp_path, alice, inferences=2).connect()
    assert f"allows {BUDGET} queries per client" in str(err.value)
    assert "used 2" in str(err.value) and "1 left" in str(err.value)
    run(dep, tmp_path, alice, xs[2:3])                         # the 3rd
    with pytest.raises(QueryBudgetError) as err:               # the (N+1)-th
        session(dep, tmp_path, alice).connect()
    assert "used 3" in str(err.value) and "0 left" in str(err.value)
    ys, _ = run(dep, tmp_path, bob, xs[:1])                    # another certificate
    assert ys[0].sum().item() == 1.0


def test_a_session_cannot_serve_beyond_its_reservation(dep, data, tmp_path):
    """A client that ignores its own limit (plaintext: no material runs out) gets no
    answer past what it reserved, and the refused query is not counted."""
    xs, _ = data
    carol = new_client(dep, tmp_path, "carol")
    s = session(dep, tmp_path, carol, protocol="plaintext")
    s.connect()
    s.offline()
    s.infer(xs[0])
    s._runs = 0                                                # bypass the client's check
    with pytest.raises(PeerError, match="this session reserved 1 inferences"):
        s.infer(xs[1])
    with pytest.raises(QueryBudgetError, match="used 1, 0 are reserved .* 2 left"):
        session(dep, tmp_path, carol, inferences=3).connect()


def test_cli_prints_the_label_and_its_policy(dep, tmp_path):
    certs = new_client(dep, tmp_path, "dave").cert.parent     # ca.pem, client.pem, client.key
    out = tmp_path / "rec.json"
    cmd = [sys.executable, "-m", "client", "--model", MODEL, "--protocol", "mpc",
           "--server", dep.server_address, "--dealer", dep.dealer_address, "--index", "17",
           "--certs", str(certs), "--store", str(tmp_path / "s"), "--json", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rec = json.loads(out.read_text())
    assert rec["output_policy"] == "label"
    assert "output=label" in res.stdout and "only the one-hot of the argmax" in res.stdout
    assert "revealed label agrees with plaintext: True" in res.stdout
    assert rec["fidelity"]["max_abs_error"] == 0


def test_server_refuses_to_start_with_a_policy_the_model_cannot_serve(tmp_path):
    res = subprocess.run([sys.executable, "-m", "server", "--model", "minilm", "--protocol",
                          "plaintext", "--insecure", "--set", "output.policy=label"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "embedding model" in res.stderr
