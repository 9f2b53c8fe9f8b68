"""Output policy (``models.output_policy``): label / top-k / full, computed inside the
protocol before the reveal, agreed in the config digest."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from models import output_policy as op
from models.digits import as_model_input, load_split
from models.registry import get_model
from protocols.channel import run_pair
from protocols.config import Config, ConfigError, OutputConfig
from protocols.ops import TorchOps
from protocols.registry import get_family
from protocols.session import HandshakeError, check_hello, make_hello
from tests.helpers import make_contexts, run_family

MODEL = "digits-mlp"


def config(*sets: str) -> Config:
    return Config().with_overrides(list(sets))


@pytest.fixture(scope="module")
def digits():
    spec = get_model(MODEL)
    weights = spec.load_weights()
    _, X_test, _, _ = load_split()
    xs = [as_model_input(spec, X_test[i:i + 1]) for i in range(40)]
    logits = spec.forward(TorchOps(weights), torch.cat(xs))
    return spec, weights, xs, logits


# -- configuration and handshake --------------------------------------------------------------

def test_output_config_is_checked():
    assert config("output.policy=topk", "output.k=3").output == OutputConfig("topk", 3)
    assert OutputConfig("topk", 3).describe() == "topk:3"
    for bad in (["output.policy=logits"], ["output.policy=topk", "output.k=0"],
                ["output.k=2"], ["output.policy=label", "output.k=2"], ["output.k=two"]):
        with pytest.raises(ConfigError):
            config(*bad)


def test_digest_omits_the_default_and_tells_every_policy_apart():
    cfg = Config()
    agreed = {"fixed": {"frac_bits": 16},
              "compare": {"method": "fss", "bits": 40, "relu_drop_bits": 0}}
    old = hashlib.sha256(json.dumps(agreed, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.digest() == old                       # records made before the policy existed
    digests = {config(*s).digest() for s in ([], ["output.policy=label"], ["output.policy=full"],
                                              ["output.policy=topk", "output.k=2"],
                                              ["output.policy=topk", "output.k=3"])}
    assert len(digests) == 5
    assert config("threads=2").digest() == old       # local settings stay out


def test_output_of_digest_recovers_the_other_policy():
    ours = Config()
    assert ours.output_of_digest(config("output.policy=full").digest()) == OutputConfig("full")
    assert ours.output_of_digest(config("output.policy=topk", "output.k=5").digest()) == \
        OutputConfig("topk", 5)
    assert ours.output_of_digest(config("fixed.frac_bits=18").digest()) is None


def test_handshake_refuses_another_policy_naming_both():
    spec = get_model(MODEL)
    client = config("output.policy=topk", "output.k=3")
    hello = make_hello(spec=spec, protocol="mpc", config_digest=client.digest(),
                       input_shape=(1, 64), inferences=1)
    server = config("output.policy=label")
    with pytest.raises(HandshakeError) as err:
        check_hello(hello, spec=spec, protocols=["mpc"], config_digest=server.digest(),
                    config=server)
    msg = str(err.value)
    assert "output policy mismatch" in msg and "'topk:3'" in msg and "'label'" in msg
    assert check_hello(hello, spec=spec, protocols=["mpc"], config_digest=client.digest(),
                       config=client) == (1, 64)
    other = config("fixed.frac_bits=18")             # not a policy: the digests are named
    with pytest.raises(HandshakeError, match="config digest mismatch"):
        check_hello(hello, spec=spec, protocols=["mpc"], config_digest=other.digest(),
                    config=other)


# -- what each task gets --------------------------------------------------------------------

def test_auto_is_what_the_task_needs():
    assert op.describe(get_model(MODEL), Config()) == "label"
    assert op.describe(get_model("minilm"), Config()) == "full"
    assert op.describe(get_model("tiny-gpt"), Config()) == "tokens"
    assert op.describe(get_model("tiny-gpt"), config("output.policy=label")) == "tokens"
    assert op.describe(get_model(MODEL), config("output.policy=topk", "output.k=9")) == "topk:9"
    assert op.apply(get_model("minilm"), Config()) is get_model("minilm")
    assert op.apply(get_model(MODEL), config("output.policy=full")) is get_model(MODEL)


@pytest.mark.parametrize("model,sets,family,words", [
    ("minilm", ["output.policy=label"], "mpc", "embedding model"),
    ("minilm", ["output.policy=topk", "output.k=2"], "mpc", "embedding model"),
    ("tiny-gpt", ["output.policy=full"], "mpc", "decoder"),
    ("tiny-gpt", ["output.policy=topk", "output.k=2"], "mpc", "decoder"),
    (MODEL, [], "ee", "cannot be enforced under ee"),
    (MODEL, ["output.policy=topk", "output.k=10"], "mpc", "[1, 9]"),
])
def test_policies_a_model_cannot_serve_are_refused(model, sets, family, words):
    with pytest.raises(op.OutputPolicyError) as err:
        op.apply(get_model(model), config(*sets), family)
    assert words in str(err.value)


def test_wrapped_spec_keeps_its_architecture_and_says_what_it_applies():
    spec = get_model(MODEL)
    wrapped = op.apply(spec, config("output.policy=topk", "output.k=3"))
    assert wrapped is not spec and wrapped.arch_digest() == spec.arch_digest()
    assert wrapped.notes["output_policy"] == {"policy": "topk", "k": 3, "push": 2.0 ** 14}
    assert op.push_constant(config("compare.bits=32")) == 2.0 ** 13


# -- the computation, in float ------------------------------------------------------------

def test_label_and_topk_in_float(digits):
    spec, weights, xs, logits = digits
    ops = TorchOps(weights)
    x = torch.cat(xs)
    label = op.apply(spec, Config()).forward(ops, x)
    assert torch.equal(label, torch.nn.functional.one_hot(logits.argmax(-1), 10).double())
    top = op.apply(spec, config("output.policy=topk", "output.k=4")).forward(ops, x)
    assert top.shape == (len(xs), 4, 10)
    assert torch.equal(top.argmax(-1), logits.topk(4).indices)
    assert torch.equal(top.sum(-1), torch.ones(len(xs), 4, dtype=torch.float64))


def test_ties_mark_every_tied_position():
    ops = TorchOps({})
    y = torch.tensor([[1.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    assert op.label(ops, y).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert op.top_k(ops, y, 2, 2.0 ** 14).tolist() == [[[0.0, 1.0, 1.0, 0.0],
                                                        [1.0, 0.0, 0.0, 0.0]]]
    with pytest.raises(op.OutputPolicyError):
        op.top_k(ops, y, 4, 2.0 ** 14)


# -- on shares: what the client receives -----------------------------------------------------

def _same_label_pair(logits):
    """Two test images with the same plaintext label and clearly different logits."""
    for i in range(len(logits)):
        for j in range(i + 1, len(logits)):
            if logits[i].argmax() == logits[j].argmax() and \
                    (logits[i] - logits[j]).abs().max() > 1.0:
                return i, j
    raise AssertionError("no pair")


def _record_output_frames(cctx):
    """Wrap the client's channel: keep every frame tagged "output" it receives."""
    got, recv = [], cctx.channel.recv

    def recording(tag, *a, **kw):
        t = recv(tag, *a, **kw)
        if tag == "output":
            got.append(t.clone())
        return t
    cctx.channel.recv = recording
    return got


@pytest.mark.parametrize("policy", ["label", "full"])
def test_mpc_label_reveals_a_function_of_the_label_alone(digits, tmp_path, policy):
    """Under mpc the argmax runs on shares: the opened value (the server's share plus the
    client's) is exactly the one-hot, the same for two images of one label, so nothing of
    the logits reaches the client. ``full`` is the control: there the two outputs differ."""
    spec, weights, xs, logits = digits
    i, j = _same_label_pair(logits)
    wrapped = op.apply(spec, config(f"output.policy={policy}"), "mpc")
    fam = get_family("mpc")
    cctx, sctx, _ = make_contexts(wrapped, xs[i].shape, tmp_path, inferences=2)
    frames = _record_output_frames(cctx)
    client, server = fam.client(cctx), fam.server(sctx, weights)

    def run_client():
        client.offline()
        return [client.online(xs[k]) for k in (i, j)]

    def run_server():
        server.offline()
        server.online()
        server.online()

    (yi, yj), _ = run_pair(run_client, run_server)
    assert [(r.to, r.tag, r.shape) for r in cctx.meter.reveals] == [("client", "output",
                                                                      (1, 10))] * 2
    assert len(frames) == 2                          # the server's shares of the output
    if policy == "label":
        onehot = torch.nn.functional.one_hot(logits[i].argmax(), 10).double().reshape(1, 10)
        assert torch.equal(yi, onehot) and torch.equal(yj, onehot)
    else:
        assert (yi - yj).abs().max() > 1.0
        assert (yi - logits[i]).abs().max() < 0.01


def test_mpc_topk_gives_the_plaintext_indices(digits, tmp_path):
    spec, weights, xs, logits = digits
    k, n = 3, 6
    wrapped = op.apply(spec, config("output.policy=topk", f"output.k={k}"), "mpc")
    outs, cctx, _, _ = run_family(get_family("mpc"), wrapped, weights, xs[:n], tmp_path)
    vals = logits[:n].topk(k + 1).values
    clear = ((vals[:, :-1] - vals[:, 1:]) > 0.02).all(-1)      # gaps above twice the budget
    assert clear.sum() >= 3
    got = torch.cat(outs)
    assert got.shape == (n, k, 10) and set(got.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(got.argmax(-1)[clear], logits[:n].topk(k).indices[clear])
    assert [r.shape for r in cctx.meter.reveals] == [(1, k, 10)] * n


@pytest.mark.parametrize("protocol", ["plaintext", "hybrid", "he", "crypten"])
def test_every_family_reveals_only_the_label(digits, tmp_path, protocol):
    spec, weights, xs, logits = digits
    wrapped = op.apply(spec, Config(), protocol)
    outs, cctx, _, _ = run_family(get_family(protocol), wrapped, weights, xs[:2], tmp_path)
    want = torch.nn.functional.one_hot(logits[:2].argmax(-1), 10).double()
    assert torch.equal(torch.cat(outs), want)
    to_client = [r for r in cctx.meter.reveals if r.to == "client"]
    assert len(to_client) == 2 and all(r.shape == (1, 10) for r in to_client)
