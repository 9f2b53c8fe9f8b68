"""Bad user input and mTLS refusals, counted for the reliability table.

``bad_inputs(dep, n)``: n malformed inputs (wrong shapes, dtypes, NaN/inf, values outside
the model's input range, non-tensors, empty batches; seeded test data) offered through the
client API to one live ``mpc`` session of digits-mlp (real processes): each must raise
ValueError or TypeError naming the problem, spend no preprocessing, and leave the session
in step (a valid input afterwards is correct).
``cli_cases()``: unknown model and protocol names, missing, corrupted and pickled weights
files: each must end the process with a one-line error, no traceback.
``mtls_cases(dep, tmp)``: plaintext, certificate-less, other-CA and expired clients against the
real server and dealer (refused), and each legitimate pair (accepted).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.launch import REPO, Deployment
from models.registry import get_model

MODEL = "digits-mlp"
# a protocol-4 pickle of {"fc1.weight": [0.0]} (no pickle import in product code)
PICKLE_BYTES = (b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\nfc1.weight"
                b"\x94]\x94G\x00\x00\x00\x00\x00\x00\x00\x00as.")


def _bad(rng: random.Random, shape: tuple[int, ...]):
    kind = rng.choice(["shape", "dtype", "nan", "inf", "range", "type", "empty"])
    if kind == "shape":
        s = list(shape)
        s[rng.randrange(len(s))] += rng.choice([-1, 1, 7])
        return kind, torch.rand(*[max(v, 0) for v in s], dtype=torch.float64)
    if kind == "dtype":
        return kind, torch.zeros(shape, dtype=rng.choice([torch.int64, torch.int32, torch.bool]))
    x = torch.rand(shape, dtype=torch.float64)
    idx = rng.randrange(x.numel())
    if kind in ("nan", "inf"):
        x.view(-1)[idx] = float("nan") if kind == "nan" else rng.choice([1, -1]) * float("inf")
    elif kind == "range":
        x.view(-1)[idx] = rng.choice([-1, 1]) * 10 ** rng.uniform(0.2, 12)
    elif kind == "type":
        return kind, rng.choice(["an image", {"x": 1}, None, object()])
    else:
        return kind, torch.zeros((0,) + shape[1:], dtype=torch.float64)
    return kind, x


def bad_inputs(dep, n: int = 500, seed: int = 0) -> list[dict]:
    """n bad inputs offered to one live client session (real processes) before one valid."""
    from benchmarks.sessions import ERROR_BUDGET
    from client.api import PrivateInference
    from client.reference import plaintext_forward
    spec = get_model(MODEL)
    shape = (1,) + tuple(spec.input_shape)
    good = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(shape)
    rng = random.Random(seed)
    counts: dict[str, list[int]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="pinfer-inputs-"))
    s = PrivateInference(model=MODEL, protocol="mpc", server=dep.server_address,
                         dealer=dep.dealer_address, tls=dep.client_tls(), store_root=tmp,
                         config=_full_output(), inferences=1)
    with s:
        s.offline()
        for _ in range(n):
            kind, x = _bad(rng, shape)
            c = counts.setdefault(kind, [0, 0])
            c[0] += 1
            try:
                s.infer(x)
                c[1] += 1                              # accepted: a failure
            except (ValueError, TypeError) as exc:
                c[1] += int(not str(exc))
            except Exception:  # noqa: BLE001 - any other exception is a crash
                c[1] += 1
        y = s.infer(good)
    ref, _ = plaintext_forward(spec, spec.load_weights(), good, repeats=1)
    wrong = int((y - ref).abs().max().item() > ERROR_BUDGET[MODEL])
    spent = int(s.record()["inferences_per_session"] != 1)
    return [{"class": "bad user input (client API, real processes)",
             "case": f"{kind}, then a valid input", "cases": c[0], "crashes": c[1], "hangs": 0,
             "reused_preprocessing": spent, "wrong_results": wrong}
            for kind, c in sorted(counts.items())]


def _full_output():
    from protocols.config import Config
    return Config().with_overrides(["output.policy=full"])


def cli_cases() -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="pinfer-cli-"))
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"\x00" * 64)
    pickled = tmp / "pickled.safetensors"
    pickled.write_bytes(PICKLE_BYTES)
    server = ["server", "--model", MODEL, "--protocol", "plaintext", "--insecure", "--store",
              str(tmp / "store"), "--weights"]
    cases = [("unknown model", ["server", "--model", "nope", "--insecure"], "invalid choice"),
             ("unknown protocol", ["client", "--model", MODEL, "--protocol", "nope", "--server",
                                   "127.0.0.1:1", "--index", "0", "--insecure"], "invalid choice"),
             ("missing weights file", server + [str(tmp / "missing.safetensors")], "not found"),
             ("corrupted safetensors", server + [str(corrupt)], "not a valid safetensors"),
             ("pickle offered as weights", server + [str(pickled)], "pickle")]
    rows = []
    for name, argv, match in cases:
        try:
            out = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                                 text=True, timeout=60)
            ok = out.returncode != 0 and match in out.stderr and "Traceback" not in out.stderr
            hang = 0
        except subprocess.TimeoutExpired:
            ok, hang = False, 1
        rows.append({"class": "bad user input (command line)", "case": name, "cases": 1,
                     "crashes": int(not ok), "hangs": hang, "reused_preprocessing": 0,
                     "wrong_results": 0})
    return rows


def ready(address: str, creds, timeout: float = 3.0) -> bool:
    """Whether a channel with these credentials (None: plaintext) completes its handshake."""
    import grpc
    channel = grpc.insecure_channel(address) if creds is None else \
        grpc.secure_channel(address, creds)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def bad_credentials(dep, tmp: Path) -> dict:
    """Plaintext, TLS without a certificate, another CA's and an expired certificate."""
    import grpc
    from protocols import tls
    ca = (dep.certs / "ca.pem").read_bytes()
    other = tls.make_certs(tmp / "other", ca_name="intruder-ca")["client"]
    old = tls.make_certs(tmp / "old", roles=("client",), ca_dir=dep.certs,
                         expired=True)["client"]
    _, cert, key = other.read()
    return {"plaintext": None,
            "tls without a certificate": grpc.ssl_channel_credentials(root_certificates=ca),
            "certificate of another CA": grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert),
            "expired certificate": tls.channel_credentials(old)}


def mtls_cases(dep, tmp: Path) -> list[dict]:
    from protocols import tls
    rows, bad = [], bad_credentials(dep, tmp)
    for endpoint, address in (("server", dep.server_address), ("dealer", dep.dealer_address)):
        for name, creds in bad.items():
            rows.append({"class": "mTLS", "case": f"{name} -> {endpoint} (refused)",
                         "cases": 1, "crashes": int(ready(address, creds)), "hangs": 0,
                         "reused_preprocessing": 0, "wrong_results": 0})
    for role, endpoint, address in (("client", "server", dep.server_address),
                                    ("client", "dealer", dep.dealer_address),
                                    ("server", "dealer", dep.dealer_address)):
        ok = ready(address, tls.channel_credentials(tls.TlsFiles.for_role(dep.certs, role)))
        rows.append({"class": "mTLS", "case": f"{role} certificate -> {endpoint} (accepted)",
                     "cases": 1, "crashes": int(not ok), "hangs": 0,
                     "reused_preprocessing": 0, "wrong_results": 0})
    return rows


def run(n: int = 500, progress=print) -> list[dict]:
    """Every row of this module, against one deployment."""
    tmp = Path(tempfile.mkdtemp(prefix="pinfer-reliability-"))
    with Deployment(MODEL, ["mpc"], certs=tmp / "certs", workdir=tmp) as dep:
        progress(f"  bad inputs: {n} through the client API")
        rows = bad_inputs(dep, n)
        progress("  mTLS: every pair, good and bad credentials")
        rows += mtls_cases(dep, tmp)
    progress("  command line: bad names and weights files")
    return rows + cli_cases()
