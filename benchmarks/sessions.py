"""Measured client sessions against a running deployment, as benchmark records."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import base_record
from client.api import PrivateInference
from client.reference import fidelity, plaintext_forward
from models.registry import get_model
from protocols.config import Config, OutputConfig

ERROR_BUDGET = {"digits-mlp": 0.01, "digits-cnn": 0.01,   # max |logit error|, 16 frac bits
                "digits-mlp-relu": 0.01, "digits-cnn-relu": 0.01}


def run_session(dep, model: str, protocol: str, inputs: list[torch.Tensor], workdir: Path,
                config=None, ee_key=None):
    """One session: offline for len(inputs) inferences, then each input; returns
    (outputs, record). The client asks for the output policy the deployment was started
    with (``Deployment.output_policy``: full logits for a classifier) unless ``config``
    names one."""
    config = config or Config()
    policy = getattr(dep, "output_policy", None)
    if policy is not None and config.output == OutputConfig():
        config = dataclasses.replace(config, output=OutputConfig(policy))
    s = PrivateInference(model=model, protocol=protocol, server=dep.server_address,
                         dealer=dep.dealer_address, tls=dep.client_tls(), config=config,
                         inferences=len(inputs), batch=inputs[0].shape[0],
                         store_root=workdir / "client-store", ee_key=ee_key,
                         seq_len=inputs[0].shape[1] if get_model(model).seq_buckets else None)
    with s:
        s.offline()
        outs = [s.infer(x) for x in inputs]
    return outs, s.record()


def median_of_sessions(dep, model, protocol, inputs, workdir, repeats: int,
                       compressed: bool = False) -> dict:
    """``repeats`` single-inference sessions; seconds are medians, bytes must not vary
    (``compressed``: they may, by under 1%: SEAL compresses keys and ciphertexts with
    zstd, so their sizes depend on the random values; the spread is recorded)."""
    recs = [run_session(dep, model, protocol, [inputs[i % len(inputs)]], workdir)[1]
            for i in range(repeats)]
    rec = recs[len(recs) // 2]
    for phase in ("offline", "online"):
        secs = [r[phase]["seconds"] for r in recs]
        rec[phase]["seconds"] = statistics.median(secs)
        rec[phase]["spread"] = [min(secs), max(secs)]
        sent = {r[phase]["bytes_sent"] for r in recs}
        if compressed and max(sent) < 1.01 * min(sent):
            rec[phase]["bytes_spread"] = [min(sent), max(sent)]
        elif len(sent) != 1:
            raise RuntimeError(f"{protocol}/{model}: {phase} bytes varied between runs: {sent}")
    rec["params"]["repeats"] = repeats
    return rec


def finish_record(rec: dict, *, model: str, protocol: str, spec, weights, inputs, outputs,
                  net: str, threads: int, labels=None) -> dict:
    """Add the reference fields (plaintext seconds, fidelity) and the common fields."""
    x = torch.cat(inputs)
    y = torch.cat(outputs)
    ref, secs = plaintext_forward(spec, weights, inputs[0])
    ref_all = plaintext_forward(spec, weights, x, repeats=1)[0]
    fid = fidelity(y, ref_all, ERROR_BUDGET[model])
    if labels is not None:
        fid["accuracy"] = (y.argmax(-1) == torch.as_tensor(labels)).double().mean().item()
        fid["plaintext_accuracy"] = (ref_all.argmax(-1) == torch.as_tensor(labels)).double().mean().item()
    fid["error_budget"] = ERROR_BUDGET[model]
    fid["samples"] = len(x)
    fields = {**rec, "plaintext_seconds": secs, "fidelity": fid, "net": net,
              "threads": threads, "model": model, "protocol": protocol, "method": ""}
    return base_record("foundation", **fields)


def read_wire(report: Path, timeout: float = 10.0) -> dict | None:
    """The wire proxy's totals (it rewrites its report when a connection closes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if report.is_file():
            try:
                data = json.loads(report.read_text())
                if data.get("connections") and all(c.get("closed") for c in data["connections"]):
                    return data
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    return None
