"""The model owner's one-time step for ``ee``: a fresh key, the transformed model for the
host, the key for the clients.

    python -m server.ee_owner --model minilm --host-dir DEPLOY --client-key KEY.safetensors

Writes DEPLOY/weights.safetensors (the transformed weights: all the host ever gets) and
DEPLOY/deployment.json (model and a public deployment id), and the key to the client-key
file (safetensors, never pickle). Give the host DEPLOY and the clients the key; never
give the host the key. Run it again for every deployment: each gets a fresh key.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.equivariant import EeKey, EeKeyError, transform_weights
from models.registry import MODELS, get_model
from models.spec import load_safetensors


def make_deployment(spec, weights, host_dir: Path, client_key: Path) -> tuple[EeKey, dict]:
    """Key, transform, files; returns the key and the timings."""
    from safetensors.torch import save_file
    t0 = time.perf_counter()
    key = EeKey.generate(spec)
    t1 = time.perf_counter()
    transformed = transform_weights(spec, weights, key)
    t2 = time.perf_counter()
    host_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in transformed.items()}, str(host_dir / "weights.safetensors"))
    (host_dir / "deployment.json").write_text(json.dumps(
        {"model": spec.name, "deployment": key.deployment}) + "\n")
    key.save(client_key)
    return key, {"keygen_seconds": t1 - t0, "transform_seconds": t2 - t1}


def load_deployment(spec, host_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The host's side: transformed weights (checked against the spec) and the id."""
    try:
        info = json.loads((Path(host_dir) / "deployment.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EeKeyError(f"{host_dir}: not an ee deployment ({exc})") from None
    if info.get("model") != spec.name:
        raise EeKeyError(f"{host_dir} deploys {info.get('model')!r}, not {spec.name!r}")
    weights = load_safetensors(Path(host_dir) / "weights.safetensors", spec.params)
    return weights, str(info["deployment"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m server.ee_owner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--weights", type=Path, help="the owner's weights (default: the model's own)")
    p.add_argument("--host-dir", type=Path, required=True, help="deployment directory for the host")
    p.add_argument("--client-key", type=Path, required=True, help="key file for the clients")
    args = p.parse_args(argv)
    spec = get_model(args.model)
    key, times = make_deployment(spec, spec.load_weights(args.weights), args.host_dir,
                                 args.client_key)
    print(f"ee deployment {key.deployment} of {spec.name}: host files in {args.host_dir}, "
          f"client key {args.client_key} (key {times['keygen_seconds']:.2f} s, transform "
          f"{times['transform_seconds']:.2f} s)")


if __name__ == "__main__":
    main()
