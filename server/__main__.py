"""The server process: ``python -m server --model digits-cnn --protocol mpc --port P --dealer H:D``.

Holds the private model and serves private inference sessions to clients. Each client
first says Hello (version, protocol, config and architecture digests are checked), then
runs the offline and online phases over one gRPC stream. The dealer is never started
here: it is a separate process (``python -m server.dealer``) that this server dials.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import torch

from models.output_policy import OutputPolicyError, describe as describe_output
from models.spec import WeightsError
from models.registry import MODELS, get_model
from protocols import config as config_mod
from protocols import store_root
from protocols.endpoints import add_run_args, add_tls_args, make_server, tls_from_args
from protocols.registry import FAMILIES, get_family
from server.ee_owner import load_deployment
from server.health import Health
from server.service import PartyServicer, add_to_server

DEFAULT_STORE = Path(".pinfer/store")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="model to serve")
    p.add_argument("--protocol", default="mpc",
                   help=f"comma-separated protocols to offer (available: {', '.join(sorted(FAMILIES))})")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--dealer", metavar="HOST:PORT",
                   help="the dealer process (needed by protocols that use one, e.g. mpc)")
    p.add_argument("--weights", type=Path, help="safetensors file (default: the model's own)")
    p.add_argument("--ee-deployment", type=Path, metavar="DIR",
                   help="ee: the owner's deployment (python -m server.ee_owner); the host "
                        "then holds only the transformed weights and serves only ee")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help=f"directory for preprocessing material (owner-only; default {DEFAULT_STORE})")
    store_root.add_store_args(p)
    p.add_argument("--query-budget", type=int, metavar="N",
                   help="queries (examples) each client may ask of this server process, told "
                        "apart by certificate fingerprint (--insecure: by address); default "
                        "unlimited. What each query reveals: --set output.policy=auto|label|"
                        "topk|full (auto: a classifier's label, an embedding, a decoder's tokens)")
    add_run_args(p)
    add_tls_args(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="server: %(message)s")
    cfg = config_mod.load(args.config, args.set)
    torch.set_num_threads(args.threads)
    spec = get_model(args.model)
    families = {name: get_family(name) for name in args.protocol.split(",") if name}
    deployment = None
    if args.ee_deployment or "ee" in families:
        if set(families) != {"ee"} or not args.ee_deployment:
            raise SystemExit("error: an ee host serves only --protocol ee, from "
                             "--ee-deployment DIR (python -m server.ee_owner makes one)")
        weights, deployment = load_deployment(spec, args.ee_deployment)
    else:
        try:
            weights = spec.load_weights(args.weights)
        except WeightsError as exc:        # missing, corrupted, pickled or mismatched
            raise SystemExit(f"error: {exc}") from None
    files = tls_from_args(args, "server")
    if any(f.uses_dealer for f in families.values()) and not args.dealer:
        raise SystemExit("error: protocol(s) "
                         f"{[n for n, f in families.items() if f.uses_dealer]} need --dealer HOST:PORT")
    if args.query_budget is not None and args.query_budget < 1:
        raise SystemExit(f"error: --query-budget {args.query_budget}: expected N >= 1")
    try:   # quota and TTL of the store; material left by a killed predecessor is deleted
        swept = store_root.open_root(args.store, quota_bytes=args.store_quota,
                                    ttl_s=args.store_ttl)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if swept:
        logging.info("deleted the material of %d dead or expired sessions", len(swept))
    try:
        servicer = PartyServicer(spec=spec, weights=weights, families=families, config=cfg,
                                 store_root=args.store, dealer_target=args.dealer,
                                 dealer_tls=files, insecure=files is None,
                                 ee_deployment=deployment, query_budget=args.query_budget)
    except OutputPolicyError as exc:
        raise SystemExit(f"error: {exc}") from None
    server, port = make_server(files, cfg.transport, args.port, args.host)
    add_to_server(servicer, server)
    health = Health()                 # grpc.health.v1: SERVING until shutdown
    health.add_to(server)
    server.start()
    print(f"server listening on {args.host}:{port} model={spec.name} "
          f"protocols={','.join(families)} ({'insecure' if files is None else 'mTLS'}) "
          f"output={describe_output(spec, cfg)} query-budget="
          f"{args.query_budget or 'unlimited'}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    health.set_serving(False)
    server.stop(grace=5).wait(10)
    print(f"server stopped: {servicer.sessions_done} sessions done, "
          f"{servicer.sessions_failed} failed", flush=True)


if __name__ == "__main__":
    main()
