"""``python -m benchmarks <name>``: every benchmark by name (run with no name for the list)."""

from __future__ import annotations

import sys


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {"demo": "benchmarks.demo", "foundation": "benchmarks.foundation",
             "ring-speed": "benchmarks.ring_speed", "nonlinear": "benchmarks.nonlinear",
             "approximations": "benchmarks.approx_errors",
             "crypten-baseline": "benchmarks.crypten_baseline",
             "relu-models": "benchmarks.relu_models",
             "transformers": "benchmarks.transformers", "decoding": "benchmarks.decoding",
             "kv-eviction": "benchmarks.kv_eviction", "kv-ceiling": "benchmarks.kv_ceiling",
             "he-matmul": "benchmarks.he_matmul",
             "he-models": "benchmarks.he_models", "ee": "benchmarks.ee",
             "ee-attacks": "benchmarks.ee_attacks", "run": "benchmarks.harness",
             "report": "benchmarks.report", "plaintext-speed": "benchmarks.plaintext_speed",
             "reliability": "benchmarks.reliability"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print("usage: python -m benchmarks {" + ",".join(names) + "} [options]\n\n"
              "  demo        dealer, server and client on loopback (mTLS), digits models under\n"
              "              plaintext and mpc, side-by-side table (what `make demo` runs)\n"
              "  foundation  the foundation benchmark: records and tables in benchmarks/results\n"
              "  ring-speed  int64 against float64 matmul/conv2d, one thread\n"
              "  nonlinear   ReLU 100k and softmax 128x128: every mpc method against CrypTen\n"
              "  approximations  error table of every approximation (float64 and mpc)\n"
              "  crypten-baseline  CrypTen 0.4.1 alone (TFP, TTP)\n"
              "  relu-models ReLU digits models: exact, Circa and bit-decomposition ReLU\n"
              "  transformers  MiniLM sentence embeddings: costs, fidelity, semantic search\n"
              "  decoding    tiny-gpt private decoding: per-token cost by context length\n"
              "  kv-eviction KV-cache eviction policies: plaintext accuracy, mpc cost per step\n"
              "  kv-ceiling  the most any KV eviction can save per private decode step\n"
              "  he-matmul   CKKS vector x plaintext matrix: TenSEAL's matmul against our BSGS\n"
              "  he-models   digits models and MiniLM under mpc, he and hybrid\n"
              "  ee          equivariant encryption: host speed, exactness, client/owner costs\n"
              "  ee-attacks  attacks on ee from the host's position, recovery rates\n"
              "  run         every protocol on models and networks: one record per run\n"
              "  report      summary.md and plots from the records of `run`\n"
              "  plaintext-speed  the plaintext fast path against naive float32 and float64\n"
              "  reliability faults, bad frames, bad input, mTLS, load: reliability.md\n"
              "Each takes --help.")
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = __import__(names[argv[0]], fromlist=["main"])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
