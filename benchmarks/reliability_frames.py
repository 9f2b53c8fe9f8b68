"""Bad frames (issue #9): hostile frames in-process, over real gRPC, and corrupted in flight.

* ``fuzz_in_process(n, seed)``: n seeded cases (random protobuf bytes, mutated valid
  frames, wrong dtype / shape / size / step / session, truncated bodies, oversized headers,
  replays, peer aborts) fed to a receiving ``Channel`` (the codec's ``Reassembler`` behind
  ``recv``, ``recv_json`` and ``exchange``), exactly as a party reads its peer on a link
  without TLS: every frame carries a CRC-32, which the crafted frames get right (a hostile
  peer computes it), so the checks behind it run; mutated bytes model corruption in flight.
* ``fuzz_over_grpc``, ``replay_over_grpc`` (``benchmarks.bad_streams``) and
  ``corrupt_through_proxy`` (``benchmarks.bad_clients``): crafted streams against a real
  server process, replayed and other-session frames from real clients, and real sessions
  through the wire proxy with one corrupted byte, under ``--insecure`` and mTLS.

Each returns ``{"rows": [...], ...}``; a row is {"class", "case", "cases", "crashes",
"hangs", "reused_preprocessing", "wrong_results", ...} (``benchmarks/results/
reliability.md`` is made from them elsewhere). A case ends in one of: refused (a
``FrameError``, an undecodable message, or the peer's stream ending: each names the
problem), accepted (every tensor delivered intact), accepted_altered (delivered but not
what was sent: a corruption the frame format cannot see, counted under wrong_results),
crash (any other exception, or a delivered tensor that breaks the codec's invariants),
hang (longer than ``HANG_S``). In-process there is no material: reused_preprocessing is 0.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import random
import time
from collections import Counter

import torch
from google.protobuf.message import DecodeError

from benchmarks.bad_clients import corrupt_through_proxy
from benchmarks.bad_streams import fuzz_over_grpc, replay_over_grpc
from protocols.channel import _CLOSED, PeerError, QueueChannel
from protocols.metering import Meter
from protocols.wire import codec
from protocols.wire import pinfer_pb2 as pb
from protocols.wire.codec import FrameError

__all__ = ["fuzz_in_process", "fuzz_over_grpc", "replay_over_grpc", "corrupt_through_proxy"]

SID = "fuzz-session"
HANG_S = 5.0
KINDS = ("random bytes", "random fields", "mutated bytes", "wrong dtype", "wrong shape",
         "wrong size", "wrong step", "other session", "truncated body", "oversized header",
         "replayed or duplicated", "peer abort")
NAMES = sorted(codec.DTYPES)
TORCH = {"int64": torch.int64, "float64": torch.float64, "float32": torch.float32,
         "uint8": torch.uint8}
BAD_DTYPES = ["", "int32", "float16", "INT64", "object", "\x00", "int64 ", "bfloat16"]
HUGE_DIMS = [2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 62, 2 ** 63 - 1, -1, -(2 ** 63)]


# -- seeded messages and frames -------------------------------------------------------------

def _tensor(rng: random.Random) -> torch.Tensor:
    """A tensor of random bytes (any bit pattern, NaNs included) of a random dtype/shape."""
    dtype = TORCH[rng.choice(NAMES)]
    shape = tuple(rng.randint(0, 5) for _ in range(rng.randint(0, 3)))
    size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    raw = torch.tensor(list(rng.randbytes(size)), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def _messages(rng: random.Random) -> list[tuple[str, torch.Tensor, bool]]:
    """1-3 messages (tag, tensor, is_json) as a protocol step would send them."""
    out = []
    for i in range(rng.randint(1, 3)):
        if rng.random() < 0.25:
            data = json.dumps({"op": rng.choice(["infer", "finish"]), "n": i}).encode()
            out.append(("ctl", torch.tensor(list(data), dtype=torch.uint8), True))
        else:
            out.append((f"layer{i}.open", _tensor(rng), False))
    return out


def _encode(msgs, rng: random.Random) -> list[pb.Frame]:
    frames, seq = [], 1
    for round_no, (tag, t, _) in enumerate(msgs, 1):
        part = codec.encode(tag, t, session_id=SID, seq=seq, epoch=1, round_no=round_no,
                            max_chunk=rng.choice([1, 7, 16, 64, 4096]), integrity=True)
        seq += len(part)
        frames += part
    return frames


def _random_frame(rng: random.Random, sid: str = SID) -> pb.Frame:
    shape = [rng.choice([rng.randint(0, 6), rng.randint(-3, 6), rng.choice(HUGE_DIMS)])
             for _ in range(rng.randint(0, 10))]
    return pb.Frame(
        session_id=rng.choice([sid, sid, "", "other", rng.randbytes(8).hex()]),
        seq=rng.choice([1, 1, rng.randint(0, 8), rng.getrandbits(64)]),
        epoch=rng.getrandbits(32), round=rng.getrandbits(32),
        tag=rng.choice(["layer0.open", "ctl", "", "\u00e9" * rng.randint(1, 9)]),
        dtype=rng.choice(NAMES + BAD_DTYPES), shape=shape, body=rng.randbytes(rng.randint(0, 96)),
        chunk=rng.choice([0, 0, rng.randint(0, 4), rng.getrandbits(32)]),
        chunks=rng.choice([1, 1, rng.randint(0, 4), rng.getrandbits(32)]),
        error=rng.choice(["", "", "", "boom"]))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["flip", "set", "insert", "delete", "truncate"])
        at = rng.randint(0, max(0, len(b) - 1))
        if op == "flip" and b:
            b[at] ^= 1 << rng.randint(0, 7)
        elif op == "set" and b:
            b[at] = rng.randint(0, 255)
        elif op == "insert":
            b[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete" and b:
            del b[at:at + rng.randint(1, 8)]
        elif op == "truncate":
            del b[at:]
    return bytes(b)


def _wrong_shape(f: pb.Frame, rng: random.Random) -> list[int]:
    shape = list(f.shape)
    n = math.prod(shape)
    choices = [shape + [rng.randint(0, 3)], shape[:-1], [n] if len(shape) != 1 else [1, n],
               [1] + shape, list(reversed(shape)) + [2], [rng.choice(HUGE_DIMS)] + shape,
               [1] * rng.randint(9, 12), [rng.randint(-5, -1)] + shape]
    new = rng.choice(choices)
    return new if new != shape else shape + [2]


def _case(kind: str, rng: random.Random):
    """(items for the receiver's inbox: frames or raw bytes, the messages that were meant)."""
    msgs = _messages(rng)
    frames = _encode(msgs, rng)
    i = rng.randrange(len(frames))
    f = frames[i]
    if kind == "random bytes":
        return [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 3))], msgs
    if kind == "random fields":      # half with a valid CRC, so the checks behind it run
        items = [_random_frame(rng) for _ in range(rng.randint(1, 4))]
        for g in items:
            if rng.random() < 0.5:
                g.crc = codec.frame_crc(g)
        return items, msgs
    if kind == "mutated bytes":
        items = [g.SerializeToString() for g in frames]
        for j in {rng.randrange(len(items)) for _ in range(rng.randint(1, 2))}:
            items[j] = _mutate_bytes(items[j], rng)
        return items, msgs
    if kind == "wrong dtype":
        f.dtype = rng.choice(BAD_DTYPES + [d for d in NAMES if d != f.dtype])
    elif kind == "wrong shape":
        new = _wrong_shape(f, rng)
        del f.shape[:]
        f.shape.extend(new)
    elif kind == "wrong size":
        extra = rng.randint(1, 24)
        f.body = f.body + rng.randbytes(extra) if rng.random() < 0.5 or not f.body \
            else f.body[:-min(extra, len(f.body))]
    elif kind == "wrong step":
        f.seq = rng.choice([0, f.seq - 1, f.seq + 1, f.seq + rng.randint(2, 10 ** 6),
                            2 ** 64 - 1])
    elif kind == "other session":
        f.session_id = rng.choice(["", "other", SID + "x", SID.upper(), rng.randbytes(16).hex()])
    elif kind == "truncated body":
        if f.body and rng.random() < 0.6:
            f.body = f.body[:rng.randrange(len(f.body))]
        else:
            frames = frames[:i]                        # the stream ends mid-message
    elif kind == "oversized header":
        choice = rng.randrange(4)
        if choice == 0:
            del f.shape[:]
            f.shape.extend(rng.choice([[2 ** 40], [2 ** 31, 2 ** 31], [0, 2 ** 62, 2 ** 62],
                                       [2 ** 21] * 3, [2 ** 63 - 1]]))
        elif choice == 1:
            f.chunks = rng.choice([2 ** 32 - 1, 2 ** 31, 10 ** 9])
        elif choice == 2:
            f.chunk = rng.choice([v for v in (2 ** 32 - 1, 7, 1) if v != f.chunk])
        else:
            f.tag = "t" * rng.choice([10 ** 5, 10 ** 6])
    elif kind == "replayed or duplicated":
        j = rng.randrange(len(frames))
        copy = pb.Frame.FromString(frames[j].SerializeToString())
        frames.insert(rng.randint(j + 1, len(frames)), copy)
    elif kind == "peer abort":
        frames.insert(i, codec.error_frame("peer gave up", session_id=SID, seq=f.seq,
                                           integrity=True))
    for g in frames:    # a hostile peer computes a valid CRC for what it crafts
        g.crc = codec.frame_crc(g)
    return frames, msgs


# -- one receiver per case --------------------------------------------------------------------

def _same(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape) and \
        got.contiguous().numpy().tobytes() == want.contiguous().numpy().tobytes()


def _receive(items, msgs) -> tuple[str, str]:
    """Feed ``items`` to a receiving channel that expects ``msgs``; (outcome, detail)."""
    inbox: queue.Queue = queue.Queue()
    for item in items:
        inbox.put(item if isinstance(item, bytes) else item.SerializeToString())
    inbox.put(_CLOSED)
    chan = QueueChannel(Meter("server"), queue.Queue(), inbox, link="fuzz", session_id=SID,
                        recv_timeout=HANG_S, integrity=True)
    altered = False
    try:
        for tag, want, is_json in msgs:
            if is_json:
                got = chan.recv_json(tag)
                altered |= got != json.loads(bytes(want.tolist()).decode())
                continue
            got = chan.exchange(tag, torch.zeros_like(want))   # the receiver's own share
            if got.dtype not in TORCH.values() or got.dim() > codec.MAX_DIMS or \
                    got.numel() != math.prod(got.shape):
                return "crash", f"delivered a tensor breaking the invariants: {got.dtype}"
            altered |= not _same(got, want)
        chan.recv("<end of stream>")
    except PeerError as exc:
        if "closed the stream while '<end of stream>'" in str(exc):
            return ("accepted_altered" if altered else "accepted"), ""
        return "refused", f"PeerError: {exc}"
    except FrameError as exc:
        return "refused", f"FrameError: {exc}"
    except DecodeError as exc:
        return "refused", f"undecodable: {exc}"
    except Exception as exc:  # noqa: BLE001 - exactly what this benchmark counts
        return "crash", f"{type(exc).__name__}: {exc}"
    return "crash", "a frame was delivered after the stream should have ended"


def fuzz_in_process(n: int = 10_000, seed: int = 0) -> dict:
    """``n`` seeded hostile cases through a receiving Channel; one row per case kind."""
    per_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    examples: dict[str, dict[str, str]] = {k: {} for k in KINDS}
    slowest = 0.0
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        rng = random.Random(f"{seed}:{i}")
        items, msgs = _case(kind, rng)
        t0 = time.perf_counter()
        outcome, detail = _receive(items, msgs)
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if dt > HANG_S:
            outcome = "hang"
        per_kind[kind][outcome] += 1
        examples[kind].setdefault(outcome, f"case {i}: {detail[:160]}")
    rows = [{"class": "bad frames (in-process)", "case": kind, "cases": sum(c.values()),
             "crashes": c["crash"], "hangs": c["hang"], "reused_preprocessing": 0,
             "wrong_results": c["accepted_altered"], "refused": c["refused"],
             "accepted": c["accepted"], "accepted_altered": c["accepted_altered"],
             "examples": examples[kind]} for kind, c in per_kind.items()]
    return {"rows": rows, "cases": n, "seed": seed, "slowest_case_s": round(slowest, 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability_frames",
                                description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="in-process cases")
    p.add_argument("--grpc", type=int, default=300, help="crafted streams over gRPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here (JSON Lines)")
    args = p.parse_args(argv)
    results = [fuzz_in_process(args.n, args.seed), fuzz_over_grpc(args.grpc, seed=args.seed),
               replay_over_grpc(), corrupt_through_proxy(insecure=True),
               corrupt_through_proxy(insecure=False)]
    rows = [row for r in results for row in r["rows"]]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "examples"}))
    for r in results:
        if "server" in r:
            print(json.dumps({"after": r["rows"][0]["class"], "server": r["server"]}))
    if args.json:
        with open(args.json, "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
