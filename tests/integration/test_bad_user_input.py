"""Bad user input gets a clear error naming the problem, and loses nothing.

In process: out-of-range and malformed inputs are refused before anything is encoded or
sent, and the session goes on. On the command line: unknown model or protocol names,
missing, corrupted or pickled weights files end the process with one line naming the
problem, never a traceback.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from benchmarks.launch import REPO
from models.registry import get_model
from protocols.channel import run_pair
from protocols.ops import TorchOps
from protocols.registry import get_family
from tests.helpers import make_contexts

SPEC = get_model("digits-mlp")


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 64), 1.5, dtype=torch.float64), r"input value 1.5 outside .*\[0, 1\]"),
    (torch.full((1, 64), -1e9, dtype=torch.float64), r"outside the model's input range"),
    (torch.zeros(1, 65, dtype=torch.float64), "input shape"),
    (torch.full((1, 64), float("inf"), dtype=torch.float64), "NaN or inf"),
    (torch.zeros(1, 64, dtype=torch.int64), "floating point"),
    ([[0.0] * 64], "torch.Tensor"),
])
def test_bad_inputs_are_refused_and_the_session_goes_on(tmp_path, bad, match):
    weights = SPEC.load_weights()
    good = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(1, 64)
    cctx, sctx, _ = make_contexts(SPEC, good.shape, tmp_path)
    family = get_family("mpc")
    client, server = family.client(cctx), family.server(sctx, weights)

    def run_client():
        client.offline()
        with pytest.raises((ValueError, TypeError), match=match):
            client.online(bad)
        return client.online(good)

    def run_server():
        server.offline()
        server.online()

    y, _ = run_pair(run_client, run_server)
    ref = SPEC.forward(TorchOps(weights, exact=True), good)
    assert (y - ref).abs().max().item() < 1e-2
    assert client.store.remaining == 0            # no material was spent on the refusals


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,match", [
    (["server", "--model", "no-such-model", "--insecure"], "invalid choice: 'no-such-model'"),
    (["client", "--model", "digits-mlp", "--protocol", "nope", "--server", "127.0.0.1:1",
      "--index", "0", "--insecure"], "invalid choice: 'nope'"),
])
def test_unknown_names_are_refused_by_the_cli(args, match):
    out = _cli(*args)
    assert out.returncode == 2 and match in out.stderr


def test_bad_weights_files_end_the_server_with_one_clear_line(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    pickled = tmp_path / "weights.safetensors"
    pickled.write_bytes(pickle.dumps({"fc1.weight": [0.0]}, protocol=4))
    for path, match in ((tmp_path / "missing.safetensors", "not found"),
                        (corrupt, "not a valid safetensors file"),
                        (pickled, "pickle")):
        out = _cli("server", "--model", "digits-mlp", "--protocol", "plaintext", "--insecure",
                   "--weights", str(path), "--store", str(tmp_path / "store"))
        assert out.returncode != 0
        assert match in out.stderr and str(path.name) in out.stderr
        assert "Traceback" not in out.stderr
