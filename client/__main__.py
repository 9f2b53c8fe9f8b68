"""The client process: ``python -m client --model digits-cnn --protocol mpc --server H:P
--dealer H:D --index 17`` (or ``--text "..."`` for minilm, ``--retrieval 120`` or
``--prompt "0 5 ..." --max-new-tokens 4`` for the tiny-gpt decoder).

Connects to the server (mutual TLS by default), runs the handshake, the offline phase
(material from the dealer, a separate process) and the online phase on the private input,
then prints the prediction and a metrics table. ``--json FILE`` writes the run's record.

When the model's weights can be read locally (all three processes run from this repo, as
in experiments), the client also runs the plaintext model itself to fill the fidelity
fields; ``--no-reference`` turns that off. A real client never has the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from client.api import DEFAULT_STORE, PrivateInference
from client.reference import fidelity, plaintext_forward
from client.report import metrics_table
from models.digits import as_model_input, load_split
from models.equivariant import EeKey, EeKeyError
from models.output_policy import OutputPolicyError
from models.registry import MODELS, get_model
from models.spec import WeightsError
from protocols import config as config_mod
from protocols.endpoints import add_run_args, add_tls_args, tls_from_args
from protocols.channel import PeerError
from protocols.wire.codec import FrameError
from protocols.registry import FAMILIES
from protocols.session import HandshakeError
from protocols import store_root
from protocols.store import MaterialError

ERROR_BUDGET = 0.01   # logits, fixed point with 16 fractional bits (see README)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="model to query")
    p.add_argument("--protocol", default="mpc", choices=sorted(FAMILIES), help="protocol family")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the server process")
    p.add_argument("--dealer", metavar="HOST:PORT", help="the dealer process (mpc needs one)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", type=int, help="index of an image in the digits test set (0-359)")
    src.add_argument("--file", type=Path, help="input file: .npy (no pickle) or text with 64 "
                                                "pixel values in [0, 16]")
    src.add_argument("--text", help="sentence to embed (minilm); tokenized here, padded to a "
                                    "public length bucket")
    src.add_argument("--prompt", help="decoder prompt (tiny-gpt): token ids separated by spaces "
                                      "or commas")
    src.add_argument("--retrieval", type=int, metavar="LENGTH",
                     help="decoder prompt (tiny-gpt): a retrieval sample of LENGTH tokens "
                          "(key-value pairs in filler, then a query), made here from --seed")
    p.add_argument("--seed", type=int, default=0, help="sample seed for --retrieval")
    p.add_argument("--max-new-tokens", type=int, default=4,
                   help="decoders: tokens to generate (public, like the bucket; default 4)")
    p.add_argument("--bucket", type=int, help="length bucket for --text (default: the smallest "
                                              "that fits: 16, 32, 64 or 128) or for a decoder "
                                              "prompt (a multiple of 16)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the same input N times in one session (offline made for all N)")
    p.add_argument("--ee-key", type=Path, metavar="FILE",
                   help="ee: the deployment's key from its owner (python -m server.ee_owner)")
    p.add_argument("--json", type=Path, help="write the run's record (JSON) to this file")
    p.add_argument("--no-reference", action="store_true",
                   help="do not compute the plaintext reference (needs the weights locally)")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help=f"directory for preprocessing material (default {DEFAULT_STORE})")
    store_root.add_store_args(p)
    add_run_args(p)
    add_tls_args(p)
    return p


def load_prompt(args, spec) -> tuple[torch.Tensor, int | None]:
    """A decoder's input (right-aligned one-hot rows in a bucket) and, for --retrieval,
    the expected answer."""
    if args.prompt is None and args.retrieval is None:
        raise SystemExit(f"error: {spec.name} is a decoder: give --prompt or --retrieval")
    answer = None
    if args.retrieval is not None:
        from models.train_tiny_gpt import make_task
        try:
            toks, answers, _ = make_task(1, args.retrieval, torch.Generator().manual_seed(args.seed))
        except ValueError as exc:
            raise SystemExit(f"error: --retrieval: {exc}") from None
        ids, answer = toks[0].tolist(), int(answers[0, 0])
    else:
        try:
            ids = [int(t) for t in args.prompt.replace(",", " ").split()]
        except ValueError:
            raise SystemExit("error: --prompt takes integer token ids") from None
    step = spec.seq_buckets[0]
    bucket = args.bucket or -(-len(ids) // step) * step
    if bucket not in spec.seq_buckets:
        raise SystemExit(f"error: bucket {bucket} is not one of {spec.name}'s (multiples of "
                         f"{step} up to {spec.seq_buckets[-1]})")
    try:
        return spec.decoder.encode_prompt(ids, bucket), answer
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def load_input(args, spec) -> tuple[torch.Tensor, int | None]:
    if spec.decoder is not None:
        return load_prompt(args, spec)
    if args.prompt is not None or args.retrieval is not None:
        raise SystemExit(f"error: --prompt/--retrieval need a decoder model (tiny-gpt), not "
                         f"{spec.name}")
    if args.text is not None:
        if spec.task != "embedding":
            raise SystemExit(f"error: --text needs a text model (minilm), not {spec.name}")
        from models.minilm import Tokenizer
        try:
            return Tokenizer().one_hot(args.text, args.bucket), None
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    if spec.task == "embedding":
        raise SystemExit(f"error: {spec.name} takes --text")
    if args.index is not None:
        _, X_test, _, y_test = load_split()
        if not 0 <= args.index < len(X_test):
            raise SystemExit(f"error: --index {args.index} outside [0, {len(X_test) - 1}]")
        return as_model_input(spec, X_test[args.index:args.index + 1]), int(y_test[args.index])
    path = args.file
    if not path.is_file():
        raise SystemExit(f"error: input file {path} not found")
    try:
        raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
            np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
    except ValueError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if raw.size != 64:
        raise SystemExit(f"error: {path} holds {raw.size} values; a digits image has 64")
    if raw.min() < 0 or raw.max() > 16:
        raise SystemExit(f"error: {path}: pixel values must lie in [0, 16]")
    return as_model_input(spec, raw.reshape(1, 64) / 16.0), None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_mod.load(args.config, args.set)
    torch.set_num_threads(args.threads)
    spec = get_model(args.model)
    x, label = load_input(args, spec)
    files = tls_from_args(args, "client")
    try:   # quota and TTL of the store; material left by a killed client is deleted
        store_root.open_root(args.store, quota_bytes=args.store_quota, ttl_s=args.store_ttl)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ee_key = None
    if args.protocol == "ee" or args.ee_key:
        if not args.ee_key:
            print("error: --protocol ee needs --ee-key FILE (from the model's owner)",
                  file=sys.stderr)
            return 1
        try:
            ee_key = EeKey.load(args.ee_key)
        except EeKeyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        session = PrivateInference(model=args.model, protocol=args.protocol, server=args.server,
                                   dealer=args.dealer, tls=files, config=cfg,
                                   inferences=args.repeat, store_root=args.store,
                                   seq_len=x.shape[1] if spec.seq_buckets else None,
                                   new_tokens=args.max_new_tokens if spec.decoder else 0,
                                   ee_key=ee_key)
    except OutputPolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        with session:
            session.offline()
            for _ in range(args.repeat):
                y = session.infer(x)
    except (HandshakeError, ConnectionError, PeerError, MaterialError, EeKeyError,
            FrameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = session.record()
    record["threads"] = args.threads
    record["net"] = "loopback"
    if spec.decoder is not None:
        return finish_decoder(args, spec, x, y, label, record, cfg)
    if not args.no_reference:
        try:
            # the plaintext model under the same output policy (a label against a label)
            ref, secs = plaintext_forward(session.spec, spec.load_weights(), x)
            record["plaintext_seconds"] = secs
            record["fidelity"] = fidelity(y, ref, ERROR_BUDGET) if spec.task != "embedding" \
                else {"cosine": torch.nn.functional.cosine_similarity(y, ref).min().item(),
                      "max_abs_error": (y - ref).abs().max().item()}
        except WeightsError as exc:
            print(f"(no plaintext reference: {exc})", file=sys.stderr)
    if spec.task == "embedding":
        head = ", ".join(f"{v:+.4f}" for v in y[0, :8].tolist())
        cos = record.get("fidelity", {}).get("cosine")
        print(f"embedding ({y.shape[-1]} values, bucket {x.shape[1]}): [{head}, ...]"
              + (f"   cosine to plaintext: {cos:.6f}" if cos is not None else ""))
    else:
        pred = y.argmax(-1)[0].tolist()      # a one-hot label, top-k one-hot rows, or logits
        truth = f" (label {label})" if label is not None else ""
        what = f"top-{len(pred)}" if isinstance(pred, list) else "prediction"
        print(f"{what}: {pred}{truth}   protocol={args.protocol} model={args.model} "
              f"output={session.output_policy}")
    return report(args, record)


def report(args, record) -> int:
    print(metrics_table(record))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, default=str))
        print(f"record written to {args.json}")
    return 0


def finish_decoder(args, spec, x, y, answer, record, cfg) -> int:
    """Print the generated tokens, the plaintext greedy tokens (same KV policy) and the
    per-token costs."""
    from models.decoding import plain_decode
    from models.kv_eviction import make_policy
    got = [int(t) for t in y[0]]
    n = spec.decoder.prompt_length(x)
    print(f"generated {len(got)} tokens after a prompt of {n} (bucket {x.shape[1]}): {got}"
          + (f"   expected answer: {answer}" if answer is not None else ""))
    if not args.no_reference:
        try:
            ids = [int(i) for i in x[0, x.shape[1] - n:, :spec.decoder.cfg.vocab].argmax(-1)]
            want, margins = plain_decode(spec.load_weights(), ids, len(got), x.shape[1],
                                         cfg=spec.decoder.cfg, policy=make_policy(cfg.kv))
            agree = sum(a == b for a, b in zip(got, want))
            record["fidelity"] = {"top1_agree": agree / len(got), "plaintext_tokens": want,
                                  "min_margin": min(margins)}
            print(f"plaintext greedy tokens (kv {cfg.kv.method}): {want}   agreement "
                  f"{agree}/{len(got)}")
        except WeightsError as exc:
            print(f"(no plaintext reference: {exc})", file=sys.stderr)
    dec = record.get("decode", {})
    for phase in ("prefill", "decode"):
        if dec.get(phase, {}).get("rounds"):
            d = dec[phase]
            secs = f"{d['seconds']:.3f} s, " if "seconds" in d else ""
            what = "prefill + first token" if phase == "prefill" else "per decode step"
            print(f"{what}: {secs}{d['bytes'] / 2**20:.2f} MiB, {d['rounds']:.0f} rounds")
    return report(args, record)


if __name__ == "__main__":
    sys.exit(main())
