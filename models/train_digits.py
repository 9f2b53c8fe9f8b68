"""Train the digits models (square activations) deterministically and save safetensors.

  python -m models.train_digits [--model digits-mlp|digits-cnn|all] [--epochs N] [--out DIR]

Float64, one thread, seeded init and shuffling: the same command writes the same bytes.
Training runs the model's own ``forward`` through ``TorchOps`` (what the protocols run); a
small penalty on squared pre-activations and logits keeps values moderate for fixed point.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from models.digits import (DIGITS_CNN, DIGITS_CNN_RELU, DIGITS_MLP, DIGITS_MLP_RELU,
                           as_model_input, load_split)
from models.spec import WEIGHTS_DIR, ModelSpec
from protocols.ops import TorchOps

SPECS = {s.name: s for s in (DIGITS_MLP, DIGITS_CNN, DIGITS_MLP_RELU, DIGITS_CNN_RELU)}
DEFAULT_EPOCHS = {"digits-mlp": 40, "digits-cnn": 40, "digits-mlp-relu": 40, "digits-cnn-relu": 40}
BATCH, LR, WEIGHT_DECAY, ACT_PENALTY = 32, 1e-2, 1e-4, 1e-4


class RecordingOps(TorchOps):
    """TorchOps noting the max |value| into and out of each square, and their mean square."""

    def __init__(self, weights):
        super().__init__(weights)
        self.max_abs, self.penalty, self.n_square = {}, torch.zeros((), dtype=torch.float64), 0

    def square(self, x):
        self.n_square += 1
        y = x * x
        self.max_abs[f"pre-square{self.n_square}"] = float(x.detach().abs().max())
        self.max_abs[f"post-square{self.n_square}"] = float(y.detach().abs().max())
        self.penalty = self.penalty + y.mean()
        return y


def init_weights(spec: ModelSpec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform(+-1/sqrt(fan_in)) like torch's default layers; leaf tensors requiring grad."""
    out = {}
    for name, shape in spec.params.items():
        bound = 1.0 / math.sqrt(math.prod(spec.params[name.rsplit(".", 1)[0] + ".weight"][1:]))
        t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        out[name] = t.requires_grad_(True)
    return out


def train(spec: ModelSpec, epochs: int, seed: int = 0, verbose: bool = False):
    """Train from scratch; returns (float64 weights detached, plaintext test accuracy)."""
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        return _fit(spec, epochs, seed, verbose)
    finally:  # leave the caller's (say, a test session's) torch settings as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)


def _fit(spec, epochs, seed, verbose):
    gen = torch.Generator().manual_seed(seed)
    X_train, _, y_train, _ = load_split()
    x, y = as_model_input(spec, X_train), torch.as_tensor(y_train, dtype=torch.long)
    weights = init_weights(spec, gen)
    opt = torch.optim.Adam(weights.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(y), BATCH):
            idx = perm[i:i + BATCH]
            logits = spec.forward(ops := RecordingOps(weights), x[idx])
            loss = F.cross_entropy(logits, y[idx])
            reg = ACT_PENALTY * (ops.penalty + (logits * logits).mean())
            opt.zero_grad(), (loss + reg).backward()
            torch.nn.utils.clip_grad_norm_(list(weights.values()), 5.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        sched.step()
        if verbose and (epoch % 5 == 4 or epoch == epochs - 1):
            print(f"  epoch {epoch + 1:3d}  loss {total / len(y):.4f}  acc {correct / len(y):.4f}")
    final = {k: v.detach().clone() for k, v in weights.items()}
    return final, evaluate(spec, final)


@torch.no_grad()
def evaluate(spec: ModelSpec, weights: dict[str, torch.Tensor]) -> float:
    _, X_test, _, y_test = load_split()
    logits = spec.forward(TorchOps(weights), as_model_input(spec, X_test))
    return float((logits.argmax(1) == torch.as_tensor(y_test)).double().mean())


@torch.no_grad()
def report(spec: ModelSpec, weights: dict[str, torch.Tensor]) -> dict:
    """Max |value| (activations over all 1797 images, weights) and test top-2 logit margins."""
    X_train, X_test, _, _ = load_split()
    x_all = as_model_input(spec, torch.cat([torch.as_tensor(X_train), torch.as_tensor(X_test)]))
    logits = spec.forward(ops := RecordingOps(weights), x_all)
    ops.max_abs["logits"] = float(logits.abs().max())
    top2 = logits[len(X_train):].topk(2, dim=1).values  # the test rows
    margin = top2[:, 0] - top2[:, 1]
    ops.max_abs["|weight|"] = max(float(w.abs().max()) for w in weights.values())
    return {"max_abs": ops.max_abs, "margin_min": float(margin.min()),
            "n_below": int((margin < 0.05).sum())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all", choices=[*SPECS, "all"])
    ap.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULT_EPOCHS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (SPECS if args.model == "all" else [args.model]):
        spec, epochs = SPECS[name], args.epochs or DEFAULT_EPOCHS[name]
        print(f"{name}: training {epochs} epochs (seed {args.seed})")
        t0 = time.perf_counter()
        weights, acc = train(spec, epochs, seed=args.seed, verbose=True)
        print(f"  test accuracy {acc:.4f} ({round(acc * 360)}/360), "
              f"trained in {time.perf_counter() - t0:.1f}s")
        r = report(spec, weights)
        print("  max |value|: "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["max_abs"].items()))
        print(f"  test top-2 logit margin: min {r['margin_min']:.4f}, {r['n_below']} below 0.05")
        path = args.out / f"{name}.safetensors"
        meta = {"model": name, "arch_digest": spec.arch_digest(), "seed": str(args.seed),
                "epochs": str(epochs), "test_accuracy": f"{acc:.6f}", "dtype": "float64"}
        blob = save({k: v.contiguous() for k, v in weights.items()}, metadata=meta)
        n = int.from_bytes(blob[:8], "little")  # header key order varies run to run: sort it
        header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"))
        path.write_bytes(blob[:8] + header.encode().ljust(n) + blob[8 + n:])
        spec.load_weights(path)  # refuse to leave behind a file the loader would reject
        print(f"  saved {path}")


if __name__ == "__main__":
    main()
