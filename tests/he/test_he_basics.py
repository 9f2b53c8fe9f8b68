"""CKKS building blocks: parameter sets checked against the security table, depth
planned, public-only server keys validated, and the BSGS product exact to CKKS noise."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from he.keys import ClientKeys, HeContextError, ServerKeys, check_tenseal_context
from he.matvec import EncodedMatrix, decrypt_vector, encrypt_vector, matvec, rotation_steps
from he.params import HeParamError, ParamSet, check_depth, check_security, get_param_set

PS = get_param_set("n8192-d2")


def test_insecure_parameter_sets_are_refused_naming_the_limit():
    with pytest.raises(HeParamError, match="220 coefficient-modulus bits exceed the 128-bit "
                                           "limit of 218 for N = 8192"):
        check_security(ParamSet("greedy", 8192, (60, 50, 50, 60), 50))
    with pytest.raises(HeParamError, match="not one of"):
        check_security(ParamSet("odd", 6000, (40, 40), 20))
    with pytest.raises(HeParamError, match="unknown HE parameter set"):
        get_param_set("n1024")


def test_depth_is_checked_before_computing():
    check_depth(PS, 2, "two products")
    with pytest.raises(HeParamError, match="needs multiplicative depth 3 but parameter set "
                                           "'n8192-d2' supports 2"):
        check_depth(PS, 3, "three products")
    with pytest.raises(HeParamError, match="depth 1"):
        EncodedMatrix.encode(np.ones((2, 2)), ParamSet("flat", 4096, (60, 60), 40), None)


@pytest.fixture(scope="module")
def keys():
    steps = set(rotation_steps(24, 4)) | set(rotation_steps(17, 4))
    ck = ClientKeys.generate(PS, steps)
    return ck, ServerKeys.from_bundle(ck.public_bundle(), (PS.name,))


@pytest.mark.parametrize("m,n", [(24, 24), (5, 24), (24, 7), (13, 17)])
def test_bsgs_product_matches_numpy(keys, m, n):
    ck, sk = keys
    rng = np.random.default_rng(m * 100 + n)
    w, x = rng.normal(0, 0.5, (m, n)), rng.normal(0, 1, n)
    mat = EncodedMatrix.encode(w, PS, sk.context, b=4)
    y = decrypt_vector(ck, matvec(sk, encrypt_vector(ck, x, mat.d, mat.b), mat), m)
    assert np.abs(y - w @ x).max() < 1e-5


def test_the_server_holds_no_secret_key_and_checks_what_it_gets(keys):
    ck, sk = keys
    assert not hasattr(sk, "secret_key")
    bundle = ck.public_bundle()
    with pytest.raises(HeContextError, match="not allowed"):
        ServerKeys.from_bundle(dict(bundle, params="n16384-d4"), ("n8192-d2",))
    with pytest.raises(HeContextError, match="unexpected fields"):
        ServerKeys.from_bundle(dict(bundle, secret_key=b"x"), (PS.name,))
    with pytest.raises(HeContextError, match="malformed public key"):
        ServerKeys.from_bundle(dict(bundle, public_key=b"\x00" * 64), (PS.name,))
    other = ClientKeys.generate(get_param_set("n8192-d1"), [1])
    with pytest.raises(HeContextError):
        ServerKeys.from_bundle(dict(bundle, galois_keys=other.public_bundle()["galois_keys"]),
                               (PS.name,))


def test_tenseal_contexts_from_a_peer_must_be_public():
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2 ** 40
    enc = ts.ckks_vector(ctx, [1.0, 2.0])
    public = check_tenseal_context(ctx.serialize(save_secret_key=False))
    assert public.is_private() is False
    with pytest.raises(ValueError):
        ts.ckks_vector_from(public, enc.serialize()).decrypt()
    with pytest.raises(HeContextError, match="carries a secret key"):
        check_tenseal_context(ctx.serialize(save_secret_key=True))
    with pytest.raises(HeContextError, match="malformed"):
        check_tenseal_context(b"not a context")


def test_packed_tokens_share_one_product(keys):
    ck, sk = keys
    rng = np.random.default_rng(9)
    w, xs = rng.normal(0, 0.5, (24, 24)), rng.normal(0, 1, (5, 24))
    mat = EncodedMatrix.encode(w, PS, sk.context, b=4, tokens=5)
    y = decrypt_vector(ck, matvec(sk, encrypt_vector(ck, xs, mat.d, mat.b), mat), 24,
                       mat.d, mat.b, tokens=5)
    assert y.shape == (5, 24) and np.abs(y - xs @ w.T).max() < 1e-5
    with pytest.raises(ValueError, match="do not fit"):
        EncodedMatrix.encode(w, PS, sk.context, b=4, tokens=1000)
