"""A CrypTen party in its own process: CrypTen's global state never leaves it.

``python -m protocols.families.crypten_worker START_JSON`` is started by a ``crypten``
role (``protocols.families.crypten_family``); stdin carries the role's commands, fd 1
carries the worker's messages (``crypten_pipe`` format; anything CrypTen prints goes to
stderr). ``RelayCommunicator`` replaces CrypTen's ``DistributedCommunicator`` before
``crypten.init()``: every send, receive and collective becomes a message to the role,
which moves it over our metered gRPC channel to the peer's role and worker. Two parties,
no TTP: the provider is CrypTen's TFP (party 0 makes the triples).

Commands: ``weight`` (+ tensor, server only) ... ``weights_done``; the worker answers
``ready`` once CrypTen is initialised and the weights are encrypted. ``run`` (+ the
input on the client) answers ``output`` (+ the revealed ring values, client) or
``done`` (server). ``stop`` ends the process.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import sys
import traceback

import torch

from protocols.families.crypten_pipe import read_msg, write_msg

CLIENT, SERVER = 0, 1


class _Sent:
    def wait(self):
        return None

    def is_completed(self):
        return True


class _Pending:
    def __init__(self, comm, tensor):
        self.comm, self.tensor, self.done = comm, tensor, False

    def wait(self):
        if not self.done:
            self.tensor.copy_(self.comm._recv("ct.p2p"))
            self.done = True

    def is_completed(self):
        return self.done


def _is_xor(op) -> bool:
    return op is not None and "BXOR" in str(op).upper()


class RelayCommunicator:
    """CrypTen's communicator interface for 2 parties, relayed through the parent role."""

    BYTES_PER_ELEMENT = 8
    instance = None
    rank = 0
    pipe_in = pipe_out = None

    def __init__(self):
        self.world_size = 2
        self.peer = 1 - self.rank
        self._name = f"rank{self.rank}"
        self.main_group = self.ttp_group = self.ttp_comm_group = None
        self.ttp_initialized = False

    # -- class interface CrypTen calls -------------------------------------------------------
    @classmethod
    def is_initialized(cls):
        return cls.instance is not None

    @classmethod
    def initialize(cls, rank=0, world_size=1, init_ttp=False):
        if init_ttp:
            raise RuntimeError("the crypten family runs without a TTP (TFP provider)")
        cls.instance = cls()

    @classmethod
    def get(cls):
        return cls.instance

    @classmethod
    def shutdown(cls):
        cls.instance = None

    # -- relay -----------------------------------------------------------------------------
    def _send(self, tag, tensor):
        write_msg(self.pipe_out, {"op": "send", "tag": tag}, tensor)

    def _recv(self, tag):
        write_msg(self.pipe_out, {"op": "recv", "tag": tag})
        head, t = read_msg(self.pipe_in)
        if head["op"] != "data" or t is None:
            raise RuntimeError(f"worker expected data for {tag!r}, got {head['op']!r}")
        return t

    def _exchange(self, tag, tensors):
        """Send all, then receive all: one round."""
        for t in tensors:
            self._send(tag, t)
        return [self._recv(tag) for _ in tensors]

    # -- point to point --------------------------------------------------------------------
    def send(self, tensor, dst):
        self._send("ct.p2p", tensor)

    def recv(self, tensor, src=None):
        tensor.copy_(self._recv("ct.p2p"))
        return tensor

    def isend(self, tensor, dst):
        self._send("ct.p2p", tensor)
        return _Sent()

    def irecv(self, tensor, src=None):
        return _Pending(self, tensor)

    # -- collectives (2 parties) -----------------------------------------------------------
    @staticmethod
    def _combine(mine, theirs, op):
        return mine ^ theirs if _is_xor(op) else mine + theirs

    def all_reduce(self, input, op=None, batched=False):
        items = list(input) if batched else [input]
        got = self._exchange("ct.all_reduce", items)
        out = [self._combine(a, b, op) for a, b in zip(items, got)]
        return out if batched else out[0]

    def reduce(self, input, dst, op=None, batched=False):
        items = list(input) if batched else [input]
        if dst == self.rank:
            got = [self._recv("ct.reduce") for _ in items]
            out = [self._combine(a, b, op) for a, b in zip(items, got)]
        else:
            for t in items:
                self._send("ct.reduce", t)
            out = [t.clone() for t in items]
        return out if batched else out[0]

    def broadcast(self, input, src, group=None, batched=False):
        items = list(input) if batched else [input]
        if src == self.rank:
            for t in items:
                self._send("ct.broadcast", t)
        else:
            for t in items:
                t.copy_(self._recv("ct.broadcast"))
        return input

    def scatter(self, scatter_list, src, size=None, device=None):
        if src == self.rank:
            self._send("ct.scatter", scatter_list[self.peer])
            return scatter_list[self.rank].clone()
        return self._recv("ct.scatter")

    def gather(self, tensor, dst):
        if dst == self.rank:
            theirs = self._recv("ct.gather")
            return [tensor, theirs] if self.rank == 0 else [theirs, tensor]
        self._send("ct.gather", tensor)
        return [None]

    def all_gather(self, tensor):
        (theirs,) = self._exchange("ct.all_gather", [tensor])
        return [tensor, theirs] if self.rank == 0 else [theirs, tensor]

    def barrier(self):
        self._exchange("ct.barrier", [torch.zeros(1, dtype=torch.int64)])

    # -- objects: sizes only (JSON), never pickle ------------------------------------------
    def broadcast_obj(self, obj, src, group=None):
        if src == self.rank:
            if not isinstance(obj, (int, list, tuple, torch.Size)):
                raise TypeError(f"crypten worker broadcasts sizes only, not {type(obj).__name__}")
            data = json.dumps(list(obj) if not isinstance(obj, int) else obj).encode()
            self._send("ct.obj", torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return obj
        value = json.loads(bytes(self._recv("ct.obj").numpy()).decode())
        return torch.Size(value) if isinstance(value, list) else value

    def send_obj(self, obj, dst, group=None):
        raise TypeError("the crypten worker does not send Python objects (TTP only)")

    def recv_obj(self, src, group=None):
        raise TypeError("the crypten worker does not receive Python objects (TTP only)")

    # -- bookkeeping CrypTen asks for ------------------------------------------------------
    def get_world_size(self):
        return 2

    def get_rank(self):
        return self.rank

    def get_ttp_rank(self):
        return 2

    def set_name(self, name):
        self._name = name

    def get_name(self):
        return self._name

    def get_distributed_backend(self):
        return "pinfer-relay"

    def reset_communication_stats(self):
        pass

    def print_communication_stats(self):
        pass

    def get_communication_stats(self):
        return {}


def resolve_spec(ref: str):
    """A registry model name, or ``module:attr`` naming a ModelSpec or a function making one."""
    if ":" not in ref:
        from models.registry import get_model
        return get_model(ref)
    module, attr = ref.split(":", 1)
    obj = getattr(importlib.import_module(module), attr)
    return obj() if callable(obj) else obj


def _encrypt_weights(crypten, spec, weights):
    """Every weight encrypted by the server (the client passes zeros of the public shape)."""
    out = {}
    for name, shape in spec.params.items():
        w = weights.get(name) if weights is not None else None
        if w is None:
            w = torch.zeros(shape, dtype=torch.float64)
        out[name] = crypten.cryptensor(w, src=SERVER)
    return out


def main(argv) -> int:
    start = json.loads(argv[1])
    pipe_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever CrypTen prints goes to stderr, not into the pipe
    pipe_in = os.fdopen(0, "rb", buffering=0)
    try:
        torch.set_num_threads(int(start.get("threads", 1)))
        # TFP draws party 0's triples from torch's default generator (fixed default seed)
        torch.manual_seed(secrets.randbits(63))
        spec = resolve_spec(start["spec_ref"])
        if spec.arch_digest() != start["arch_digest"]:
            raise ValueError(f"model {start['spec_ref']!r} resolves to architecture "
                             f"{spec.arch_digest()}, the role has {start['arch_digest']}")
        if start.get("output"):                 # the output policy the role's spec carries
            from models.output_policy import with_policy
            out = start["output"]
            spec = with_policy(spec, out["policy"], int(out["k"]), float(out["push"]))
        rank = int(start["rank"])
        weights = {} if rank == SERVER else None
        if rank == SERVER:
            while True:
                head, t = read_msg(pipe_in)
                if head["op"] == "weights_done":
                    break
                weights[head["name"]] = t
        from protocols.families.crypten_compat import import_crypten
        crypten = import_crypten()
        crypten.cfg.mpc.provider = "TFP"
        RelayCommunicator.rank, RelayCommunicator.pipe_in = rank, pipe_in
        RelayCommunicator.pipe_out = pipe_out
        crypten.communicator.DistributedCommunicator = RelayCommunicator
        crypten.init()
        from protocols.families.crypten_ops import CryptenOps
        enc = _encrypt_weights(crypten, spec, weights)
        del weights
        ops = CryptenOps(crypten, enc, gelu=start.get("gelu", "tanh"),
                         on_scope=lambda ev, name: write_msg(pipe_out, {"op": "scope",
                                                                        "event": ev,
                                                                        "name": name}))
        shape = tuple(start["input_shape"])
        write_msg(pipe_out, {"op": "ready"})
        while True:
            head, t = read_msg(pipe_in)
            if head["op"] == "stop":
                return 0
            if head["op"] != "run":
                raise ValueError(f"unknown command {head['op']!r}")
            x = t if rank == CLIENT else torch.zeros(shape, dtype=torch.float64)
            with torch.no_grad():
                y = spec.forward(ops, crypten.cryptensor(x, src=CLIENT))
                raw = y.reveal(dst=CLIENT)
            if rank == CLIENT:
                write_msg(pipe_out, {"op": "output", "scale": float(y.encoder.scale)}, raw)
            else:
                write_msg(pipe_out, {"op": "done"})
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the role, which aborts the session
        traceback.print_exc(file=sys.stderr)
        try:
            write_msg(pipe_out, {"op": "error", "message": f"{type(exc).__name__}: {exc}"})
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
