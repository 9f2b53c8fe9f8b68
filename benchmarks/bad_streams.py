"""Hostile streams against real server processes (issue #9), for ``reliability_frames``.

* ``fuzz_over_grpc``: after a valid Hello (or none, or a bad one), a hand-driven Session
  stream sends crafted messages (undecodable bytes, wrong step / session / dtype / shape /
  size, truncated bodies, messages over the gRPC limit, replays, wrong online openings);
  the server must end each session with an error naming the problem within
  ``DEADLINE_S``. No result ever comes back, so wrong_results and reused_preprocessing
  are 0 by construction in these rows; replays are measured by the next function.
* ``replay_over_grpc``: real clients with a frame replayed, duplicated, or taken from
  another session: refused at its first read, the session's material burned, no
  server frame of a later inference sent after it.
After each batch the server must be alive, report SERVING on the gRPC health service,
have logged no traceback, and serve a valid client correctly
(``bad_clients.server_checks``; ``bad_clients.corrupt_through_proxy`` does the same).
"""

from __future__ import annotations

import json
import queue
import random
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from benchmarks.bad_clients import (CLEAN_ERRORS, MODEL, Watch, client_config, correct,
                                    failure_logged, reference, run_client, server_checks,
                                    wait_burned)
from benchmarks.launch import Deployment
from models.registry import get_model
from protocols import tls
from protocols.config import Config
from protocols.grpc_link import SESSION_KEY
from protocols.session import make_hello
from protocols.wire import codec
from protocols.wire import pinfer_pb2 as pb

DEADLINE_S = 30.0


def _ser(item) -> bytes:
    """Raw bytes as they are; a frame with a valid CRC-32 (the server runs --insecure, so
    its links check one; a hostile peer computes it too, so the checks behind it run)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, pb.Frame):
        item.crc = codec.frame_crc(item)
    return item.SerializeToString()


@dataclass
class Script:
    """What a crafted session sends: ``start`` at once; ``online(frame)`` when the server's
    first online frame arrives (after a valid ``infer``). The stream is then half-closed."""
    start: list = field(default_factory=list)
    online: object = None
    expect: tuple = ()          # one of these must be in the server's refusal (lower case)


class RawClient:
    """A hand-driven client of a real server: valid Hello, then crafted Session messages."""

    def __init__(self, target: str, files: tls.TlsFiles | None, config: Config):
        self.config = config
        opts = [("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(target, options=opts) if files is None else \
            grpc.secure_channel(target, tls.channel_credentials(files), options=opts)
        self.spec = get_model(MODEL)
        self._hello = self.channel.unary_unary("/pinfer.v1.Party/Hello", request_serializer=_ser,
                                               response_deserializer=pb.HelloReply.FromString)
        self._session = self.channel.stream_stream(
            "/pinfer.v1.Party/Session", request_serializer=_ser,
            response_deserializer=pb.Frame.FromString)

    def _request(self) -> pb.HelloRequest:
        return make_hello(spec=self.spec, protocol="mpc", config_digest=self.config.digest(),
                          input_shape=(1,) + tuple(self.spec.input_shape), inferences=1)

    def hello(self) -> str:
        return self._hello(self._request(), timeout=10).session_id

    def hostile_hello(self, rng: random.Random) -> pb.HelloRequest:
        """A well-formed Hello with one field the server must refuse."""
        req = self._request()
        field_name, value = rng.choice([
            ("input_shape", [1, -64]), ("input_shape", [0, 64]), ("input_shape", [2 ** 40, 64]),
            ("input_shape", []), ("input_shape", [1] * 9), ("inferences", 0),
            ("inferences", 2 ** 32 - 1), ("version", "9.9.9"), ("protocol", "nope"),
            ("model", "x" * 1000), ("arch_digest", ""), ("config_digest", "0" * 16),
            ("new_tokens", 5)])
        if field_name == "input_shape":
            del req.input_shape[:]
            req.input_shape.extend(value)
        else:
            setattr(req, field_name, value)
        return req

    def bad_hello(self, data: bytes) -> dict:
        """Send ``data`` as the Hello request; the server must refuse it."""
        try:
            self._hello(data, timeout=DEADLINE_S)
            return {"end": "no error", "detail": "accepted"}
        except grpc.RpcError as exc:
            hang = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            return {"end": "hang" if hang else "status",
                    "detail": f"{exc.code().name}: {exc.details()}"}

    def run(self, sid: str, script: Script, deadline: float = DEADLINE_S) -> dict:
        """Play ``script``; {"end": "error frame" | "status" | "no error" | "hang", "detail"}
        ("no error": the server ended the stream without saying why)."""
        out: queue.Queue = queue.Queue()

        def requests():
            while (item := out.get()) is not None:
                yield item

        for item in script.start:
            out.put(item)
        if script.online is None:
            out.put(None)
        errors, fired, t0 = [], script.online is None, time.monotonic()
        call = self._session(requests(), metadata=((SESSION_KEY, sid),), timeout=deadline)
        try:
            for frame in call:
                if frame.error:
                    errors.append(frame.error)
                elif not fired and frame.epoch >= 2:
                    fired = True
                    for item in script.online(frame):
                        out.put(item)
                    out.put(None)
            end = {"end": "error frame" if errors else "no error", "detail": " ".join(errors)}
        except grpc.RpcError as exc:
            hang = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            end = {"end": "hang" if hang else "status",
                   "detail": f"{exc.code().name}: {exc.details()} {' '.join(errors)}"}
        finally:
            out.put(None)
        end["seconds"] = time.monotonic() - t0
        return end

    def close(self) -> None:
        self.channel.close()


# -- crafted sessions ------------------------------------------------------------------------

def _ctl(sid: str, seq: int = 1, op="infer", **over) -> pb.Frame:
    data = json.dumps({"op": op}, sort_keys=True).encode() if isinstance(op, str) else op
    (f,) = codec.encode("ctl", torch.tensor(list(data), dtype=torch.uint8), session_id=sid,
                        seq=seq, epoch=1, round_no=1)
    for name, value in over.items():
        if name == "shape":
            del f.shape[:]
            f.shape.extend(value)
        else:
            setattr(f, name, value)
    return f


def _reply(sid: str, g: pb.Frame, tensor=None, seq: int = 2, **over) -> list[pb.Frame]:
    """Our answer to the server's first online frame ``g`` (same tag), as crafted."""
    if tensor is None:
        tensor = torch.zeros(tuple(g.shape), dtype=torch.int64)
    frames = codec.encode(over.pop("tag", g.tag), tensor, session_id=sid, seq=seq, epoch=2,
                          round_no=1, max_chunk=over.pop("max_chunk", codec.DEFAULT_MAX_CHUNK))
    for name, value in over.items():
        setattr(frames[-1], name, value)
    return frames


def _undecodable(rng: random.Random) -> bytes:
    while True:
        data = rng.randbytes(rng.randint(1, 64))
        try:
            pb.Frame.FromString(data)
        except Exception:  # noqa: BLE001 - DecodeError: what we want
            return data


def _mutated(sid: str, rng: random.Random) -> bytes:
    b = bytearray(_ser(_ctl(sid)))
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(len(b))] ^= 1 << rng.randint(0, 7)
    return bytes(b)


def craft(kind: str, rng: random.Random, sid: str, other: str) -> Script:
    """One crafted session of ``kind``; ``other`` is another live session's id."""
    c = rng.randrange(4)
    if kind == "undecodable bytes":
        return Script([_undecodable(rng)], expect=("deserializ",))
    if kind == "random frame fields":
        from benchmarks.reliability_frames import _random_frame
        return Script([_random_frame(rng, sid) for _ in range(rng.randint(1, 3))])
    if kind == "mutated valid frame":
        return Script([_mutated(sid, rng)])
    if kind == "wrong step":
        return Script([_ctl(sid, seq=rng.choice([0, 2, 7, 2 ** 64 - 1]))], expect=("step",))
    if kind == "other session":
        return Script([_ctl(rng.choice([other, other, "", sid[:-1] + "x"]))],
                      expect=("session",))
    if kind == "wrong dtype":
        return Script([_ctl(sid, dtype=rng.choice(["int32", "", "float16", "int64", "float64"]))],
                      expect=("dtype", "byte string", "bytes"))
    if kind == "wrong shape":
        shape = [[2, 7], [-1], [1] * 9, [2 ** 40], [0]][c + (rng.random() < 0.5)]
        return Script([_ctl(sid, shape=shape)],
                      expect=("byte string", "dims", "negative", "exceeds", "bytes"))
    if kind == "wrong size":
        f = _ctl(sid)
        f.body = f.body + b"}" * rng.randint(1, 9) if c < 2 else f.body[:-rng.randint(1, 5)]
        return Script([f], expect=("bytes",))
    if kind == "truncated body":
        data = json.dumps({"op": "infer", "pad": "x" * 40}).encode()
        frames = codec.encode("ctl", torch.tensor(list(data), dtype=torch.uint8),
                              session_id=sid, seq=1, epoch=1, round_no=1, max_chunk=16)
        if c < 2:
            return Script(frames[:-1], expect=("closed the stream",))
        frames[-1].body = frames[-1].body[:-1]
        return Script(frames, expect=("body has",))
    if kind == "oversized message":
        return Script([_ctl(sid, body=b"\0" * (9 << 20), shape=[9 << 20])],
                      expect=("resource_exhausted",))
    if kind == "oversized header":
        over = [dict(shape=[2 ** 40]), dict(chunks=2 ** 32 - 1), dict(shape=[1] * 9),
                dict(shape=[0, 2 ** 62, 2 ** 62])][c]
        return Script([_ctl(sid, **over)], expect=("exceeds", "chunks", "dims"))
    if kind == "replayed control message":
        return Script([_ctl(sid), _ctl(sid)], expect=("replayed",))
    if kind == "bad control message":
        op = [b"not json", b"\xff\xfe", json.dumps({"op": "explode"}).encode(), b"[1, 2]"][c]
        return Script([_ctl(sid, op=op)], expect=("json", "control message"))
    if kind == "peer abort":
        return Script([codec.error_frame("client gave up", session_id=sid, seq=1)],
                      expect=("peer aborted",))
    if kind == "empty stream":
        return Script([], expect=("closed the stream",))
    # online: a valid ``infer``, then a crafted answer to the server's first opening
    online = {
        "online wrong shape": (lambda g: _reply(sid, g, torch.zeros(
            [(1,), (64, 1), (2, 64), (1, 65)][c], dtype=torch.int64)), ("shape",)),
        "online wrong dtype": (lambda g: _reply(sid, g, torch.zeros(
            tuple(g.shape), dtype=[torch.float64, torch.uint8, torch.float32][c % 3])),
            ("dtype",)),
        "online wrong tag": (lambda g: _reply(sid, g, tag=g.tag + ".x"), ("was due",)),
        "online truncated body": (lambda g: _reply(sid, g, body=g.body[:-8]), ("body has",)),
        "online replayed frame": (lambda g: _reply(sid, g) + _reply(sid, g), ("replayed",)),
    }
    fn, expect = online[kind]
    return Script([_ctl(sid)], online=fn, expect=expect)


GRPC_KINDS = ("undecodable bytes", "random frame fields", "mutated valid frame", "wrong step",
              "other session", "wrong dtype", "wrong shape", "wrong size", "truncated body",
              "oversized message", "oversized header", "replayed control message",
              "bad control message", "peer abort", "empty stream", "online wrong shape",
              "online wrong dtype", "online wrong tag", "online truncated body",
              "online replayed frame", "no hello", "bad hello", "hostile hello fields")


def _deployment(stack: ExitStack, dep, workdir, insecure: bool):
    if dep is not None:
        return dep
    wd = Path(workdir) if workdir else None
    if wd is not None:
        wd.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(Deployment(MODEL, ["mpc"], insecure=insecure, workdir=wd))


def fuzz_over_grpc(n: int = 300, seed: int = 0, dep=None, workdir=None) -> dict:
    """``n`` crafted sessions (cycling through ``GRPC_KINDS``) against a server started with
    ``--insecure`` (or ``dep``), then ``server_checks``."""
    with ExitStack() as stack:
        dep = _deployment(stack, dep, workdir, insecure=True)
        watch = Watch(dep)
        raw = RawClient(dep.proc("server").address, dep.client_tls(), client_config(dep))
        stats = {k: Counter() for k in GRPC_KINDS}
        examples: dict[str, str] = {}
        try:
            other = raw.hello()                      # a live session whose frames we borrow
            for i in range(n):
                kind = GRPC_KINDS[i % len(GRPC_KINDS)]
                rng = random.Random(f"{seed}:grpc:{i}")
                if kind == "bad hello":     # undecodable, or over the message limit
                    data = _undecodable(rng) if rng.random() < 0.7 else \
                        pb.HelloRequest(model="m" * (9 << 20)).SerializeToString()
                    script = Script(expect=("deserializ", "resource_exhausted"))
                    got = raw.bad_hello(data)
                elif kind == "hostile hello fields":
                    script = Script(expect=("failed_precondition",))
                    got = raw.bad_hello(raw.hostile_hello(rng).SerializeToString())
                else:
                    if kind == "no hello":
                        sid, script = rng.randbytes(16).hex(), Script(expect=("not_found",))
                    else:
                        sid = raw.hello()
                        script = craft(kind, rng, sid, other)
                    got = raw.run(sid, script)
                    if kind != "no hello":  # a peer that closed or aborted gets no error
                        logged = failure_logged(dep, sid)   # frame back: the log has why
                        got["detail"] += f" | {logged}" if logged else ""
                        if logged and got["end"] == "no error":
                            got["end"] = "logged"
                s = stats[kind]
                s["cases"] += 1
                s[got["end"]] += 1
                ok = not script.expect or any(e in got["detail"].lower() for e in script.expect)
                s["reason named" if ok else "other reason"] += 1
                examples.setdefault(kind, got["detail"][:200])
                if not ok:
                    examples[f"{kind} (other reason)"] = got["detail"][:200]
        finally:
            raw.close()
        checks = server_checks(dep, watch)
    rows = [{"class": "bad frames (gRPC, insecure)", "case": kind, "cases": s["cases"],
             "crashes": s["no error"], "hangs": s["hang"], "reused_preprocessing": 0,
             "wrong_results": 0, "refused": s["error frame"] + s["status"] + s["logged"],
             "reason_named": s["reason named"], "example": examples.get(kind, "")}
            for kind, s in stats.items() if s["cases"]]
    return {"rows": rows, "server": checks, "other_reasons":
            {k: v for k, v in examples.items() if k.endswith("(other reason)")}}


# -- replay and other-session frames from real clients ---------------------------------------

def _replay_case(dep, workdir: Path, case: str, x, ref) -> dict:
    """One real session with one injected frame: {"refused", "named", "reused", "wrong",
    "burned", "message"}. ``reused``: the server went on to a later phase after it."""
    a = run_client(dep, workdir / "a", inferences=2)
    b = run_client(dep, workdir / "b", inferences=1) if "session" in case else None
    try:
        victim = b or a
        for c in (a, b):
            if c is not None:
                c.session.offline()
        if case == "replayed after an inference":
            if not correct(a.session.infer(x), ref):
                raise RuntimeError("the inference before the replay is wrong")
            bad = pb.Frame.FromString(a.sent[-1].SerializeToString())
            victim.chan._out.put(bad)
            want = f"step {bad.seq} where"
        elif case == "duplicated mid-inference":
            a.duplicate_next(".open")          # fc1.open, sent twice in a row
            want = "step {dup} where"
        else:   # a frame of session a on session b, with a's or b's next step number
            seq = b.chan._seq if case.endswith("this step") else a.chan._seq
            (bad,) = codec.encode("ctl", torch.tensor(list(b'{"op": "infer"}'), dtype=torch.uint8),
                                  session_id=a.session.session_id, seq=seq, epoch=1, round_no=1,
                                  integrity=victim.chan.integrity)   # a valid CRC, if checked
            victim.chan._out.put(bad)
            want = f"session {a.session.session_id!r}"
        # the epoch of the inference under way when the frame arrives: a server frame of a
        # later epoch means the server went on to spend another inference's material
        epoch = victim.chan._epoch + (case == "duplicated mid-inference")
        mark, t0 = len(victim.received), time.monotonic()
        outcome = "accepted"
        try:
            victim.session.infer(x)
            message = "accepted"
        except CLEAN_ERRORS as exc:
            outcome, message = "refused", str(exc)
        except Exception as exc:  # noqa: BLE001 - counted as a crash
            outcome, message = "crash", f"{type(exc).__name__}: {exc}"
        later = [f for f in victim.received[mark:]
                 if isinstance(f, pb.Frame) and not f.error and f.epoch > epoch]
        out = {"outcome": outcome, "named": want.format(dup=victim.dup_seq) in message,
               "message": message[:200], "reused": int(bool(later)), "wrong": 0,
               "hang": int(time.monotonic() - t0 > DEADLINE_S),
               "burned": wait_burned(dep, victim.session.session_id)}
        if b is not None:                   # the session whose frame was taken still works
            out["wrong"] = int(not correct(a.session.infer(x), ref))
        return out
    finally:
        for c in (a, b):
            if c is not None:
                c.close()


REPLAY_CASES = ("replayed after an inference", "duplicated mid-inference",
                "other session, its step", "other session, this step")


def replay_over_grpc(repeats: int = 3, dep=None, workdir=None) -> dict:
    """Each of ``REPLAY_CASES`` ``repeats`` times with real clients, then ``server_checks``."""
    with ExitStack() as stack:
        dep = _deployment(stack, dep, workdir, insecure=True)
        wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="replay-")))
        watch = Watch(dep)
        x, ref = reference(0)
        rows = []
        for case in REPLAY_CASES:
            res = [_replay_case(dep, wd / f"case{len(rows)}-{i}", case, x, ref)
                   for i in range(repeats)]
            rows.append({"class": "replay and other-session frames (gRPC)", "case": case,
                         "cases": repeats,
                         "crashes": sum(r["outcome"] == "crash" for r in res),
                         "accepted": sum(r["outcome"] == "accepted" for r in res),
                         "hangs": sum(r["hang"] for r in res),
                         "reused_preprocessing": sum(r["reused"] for r in res),
                         "wrong_results": sum(r["wrong"] for r in res),
                         "refused_naming_the_frame": sum(r["named"] for r in res),
                         "material_burned": sum(r["burned"] for r in res),
                         "example": res[0]["message"]})
        checks = server_checks(dep, watch)
    return {"rows": rows, "server": checks}
