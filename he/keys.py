"""CKKS keys through ``tenseal.sealapi``: the client holds the secret key; the server only
ever holds a public bundle (parameter-set name, public key, Galois keys for the rotation
steps its layers need), which it validates before use.

Wire format of the public bundle (travels over our channel as uint8 tensors, chunked and
metered like any frame): the parameter-set name (a control message), then the SEAL
serialisations of the public key and the Galois keys. There is no field for a secret key.
A client that sends a TenSEAL-serialised context instead has it checked with
``is_private()`` and refused if it carries a secret key (``check_tenseal_context``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import tenseal as ts
import tenseal.sealapi as sa

from he.params import ParamSet, check_security, get_param_set

MAX_KEY_BYTES = 1 << 30


class HeContextError(ValueError):
    """A context or key the server refuses."""


def seal_context(ps: ParamSet):
    check_security(ps)
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(ps.poly_modulus_degree)
    parms.set_coeff_modulus(sa.CoeffModulus.Create(ps.poly_modulus_degree,
                                                   list(ps.coeff_mod_bit_sizes)))
    ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise HeContextError(f"SEAL refused parameter set {ps.name!r}: "
                             f"{ctx.parameters_error_message()}")
    return ctx


def to_bytes(obj) -> bytes:
    """SEAL objects serialise to files only; go through a private temporary file."""
    fd, path = tempfile.mkstemp(prefix="pinfer-seal-")
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def from_bytes(cls, context, data: bytes, what: str):
    if len(data) > MAX_KEY_BYTES:
        raise HeContextError(f"{what} of {len(data)} bytes exceeds {MAX_KEY_BYTES}")
    fd, path = tempfile.mkstemp(prefix="pinfer-seal-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj = cls()
        try:
            obj.load(context, path)
        except (RuntimeError, ValueError) as exc:
            raise HeContextError(f"malformed {what}: {exc}") from None
        if not sa.is_valid_for(obj, context):
            raise HeContextError(f"{what} is not valid for the agreed parameter set")
        return obj
    finally:
        os.unlink(path)


@dataclass
class ClientKeys:
    """The client's side: everything, secret key included."""

    params: ParamSet
    context: object
    secret_key: object
    public_key: object
    galois_keys: object
    steps: tuple[int, ...]

    @classmethod
    def generate(cls, params: ParamSet, steps) -> "ClientKeys":
        ctx = seal_context(params)
        keygen = sa.KeyGenerator(ctx)
        pk = sa.PublicKey()
        keygen.create_public_key(pk)
        gk = sa.GaloisKeys()
        steps = tuple(sorted(set(int(s) for s in steps if s)))
        # this binding takes Galois elements, not steps: 3^step mod 2N (SEAL's rule)
        n = params.poly_modulus_degree
        elts = [pow(3, st % (n // 2), 2 * n) for st in steps]
        keygen.create_galois_keys(elts, gk)
        return cls(params, ctx, keygen.secret_key(), pk, gk, steps)

    def public_bundle(self) -> dict:
        return {"params": self.params.name, "public_key": to_bytes(self.public_key),
                "galois_keys": to_bytes(self.galois_keys)}


@dataclass
class ServerKeys:
    """The server's side: a public context only (it cannot decrypt)."""

    params: ParamSet
    context: object
    public_key: object
    galois_keys: object

    @classmethod
    def from_bundle(cls, bundle: dict, allowed: tuple[str, ...]) -> "ServerKeys":
        """Validate a client's public bundle: a known, allowed, secure parameter set and
        keys that parse and belong to it; anything else is refused by name."""
        name = bundle.get("params")
        if name not in allowed:
            raise HeContextError(f"parameter set {name!r} is not allowed here; allowed: "
                                 f"{list(allowed)}")
        extra = sorted(set(bundle) - {"params", "public_key", "galois_keys"})
        if extra:
            raise HeContextError(f"public bundle carries unexpected fields {extra}")
        ps = get_param_set(name)
        ctx = seal_context(ps)
        pk = from_bytes(sa.PublicKey, ctx, bundle["public_key"], "public key")
        gk = from_bytes(sa.GaloisKeys, ctx, bundle["galois_keys"], "Galois keys")
        return cls(ps, ctx, pk, gk)


def check_tenseal_context(data: bytes) -> "ts.Context":
    """A TenSEAL-serialised context from a peer: parsed, CKKS, no secret key."""
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises several types on bad bytes
        raise HeContextError(f"malformed TenSEAL context: {exc}") from None
    if ctx.is_private():
        raise HeContextError("the context carries a secret key; send a public context "
                             "(serialize(save_secret_key=False))")
    scheme = ctx.seal_context().data.first_context_data().parms().scheme()
    if int(scheme) != int(sa.SCHEME_TYPE.CKKS):     # two bindings, two enum types
        raise HeContextError("only CKKS contexts are accepted")
    return ctx
