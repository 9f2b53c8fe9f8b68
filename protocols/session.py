"""Handshake: checked before any private data moves.

The client's ``Hello`` names the package version, the protocol family, the config digest
(arithmetic settings), the model and its architecture digest (layer names and shapes:
public), the input shape with its batch dimension and how many inferences the session will
serve, and for a decoder how many tokens each inference generates. The server compares each with its own and refuses the first mismatch, naming both
values. The weights are never digested: a weight digest would let the client test guesses
of the server's private weights.
"""

from __future__ import annotations

from protocols.wire import pinfer_pb2 as pb

VERSION = "0.1.0"
MAX_BATCH = 4096
MAX_INFERENCES = 10_000


class HandshakeError(ValueError):
    """The two sides do not agree; nothing private has moved."""


class QueryBudgetError(HandshakeError):
    """The server refused a session: this client's query budget cannot cover it."""


def make_hello(*, spec, protocol: str, config_digest: str, input_shape, inferences: int,
               new_tokens: int = 0, version: str = VERSION) -> pb.HelloRequest:
    return pb.HelloRequest(version=version, protocol=protocol, config_digest=config_digest,
                           arch_digest=spec.arch_digest(), model=spec.name,
                           input_shape=list(input_shape), inferences=inferences,
                           new_tokens=new_tokens)


def check_new_tokens(spec, input_shape, new_tokens: int) -> None:
    """A decoder generates 1.. tokens within its context, one sequence at a time; any other
    model generates none."""
    dec = getattr(spec, "decoder", None)
    if dec is None:
        if new_tokens:
            raise HandshakeError(f"model {spec.name} is not a decoder; new_tokens must be 0, "
                                 f"got {new_tokens}")
        return
    if input_shape[0] != 1:
        raise HandshakeError(f"decoder {spec.name} takes batch 1, got {input_shape[0]}")
    room = dec.cfg.ctx - input_shape[1] + 1
    if not 1 <= new_tokens <= room:
        raise HandshakeError(f"new_tokens {new_tokens} outside [1, {room}] for a prompt "
                             f"bucket of {input_shape[1]} in a context of {dec.cfg.ctx}")


def check_hello(req: pb.HelloRequest, *, spec, protocols: list[str], config_digest: str,
                version: str = VERSION, config=None) -> tuple[int, ...]:
    """Raise ``HandshakeError`` on the first mismatch; return the agreed input shape.
    ``config`` (the server's ``Config``, optional): a config digest that differs only in
    the output policy is refused naming both policies."""
    def differ(what, theirs, ours):
        raise HandshakeError(f"{what} mismatch: client has {theirs!r}, server has {ours!r}")

    if req.version != version:
        differ("version", req.version, version)
    if req.protocol not in protocols:
        differ("protocol", req.protocol, ",".join(protocols))
    if req.model != spec.name:
        differ("model", req.model, spec.name)
    if req.arch_digest != spec.arch_digest():
        differ("architecture digest", req.arch_digest, spec.arch_digest())
    if req.config_digest != config_digest:
        theirs = config.output_of_digest(req.config_digest) if config is not None else None
        if theirs is not None:
            raise HandshakeError(
                f"output policy mismatch: client has {theirs.describe()!r}, server has "
                f"{config.output.describe()!r} (config digest: client has "
                f"{req.config_digest!r}, server has {config_digest!r}); set output.policy "
                f"(and output.k) as the server does")
        differ("config digest", req.config_digest, config_digest)
    shape = tuple(req.input_shape)
    if len(shape) != len(spec.input_shape) + 1 or not spec.accepts(shape[1:]):
        want = ["batch"] + list(spec.input_shape)
        if spec.seq_buckets:
            want[1] = "|".join(map(str, spec.seq_buckets))
        differ("input shape", list(shape), want)
    if not 1 <= shape[0] <= MAX_BATCH:
        raise HandshakeError(f"batch size {shape[0]} outside [1, {MAX_BATCH}]")
    if not 1 <= req.inferences <= MAX_INFERENCES:
        raise HandshakeError(f"inferences {req.inferences} outside [1, {MAX_INFERENCES}]")
    check_new_tokens(spec, shape, req.new_tokens)
    return shape
