"""CKKS <-> ring shares: exact to CKKS noise within the declared mask, and a returned
ciphertext that tells nothing of which weight matrix produced the result."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sa
import torch

from he import convert
from he.keys import ClientKeys, ServerKeys
from he.matvec import EncodedMatrix, decrypt_vector, encrypt_vector, matvec, replicate, rotation_steps
from he.params import get_param_set

PS = get_param_set("n8192-d2")
D, B, F = 16, 4, 16


@pytest.fixture(scope="module")
def keys():
    ck = ClientKeys.generate(PS, rotation_steps(D, B))
    return ck, ServerKeys.from_bundle(ck.public_bundle(), (PS.name,))


def _product(keys, w, x):
    ck, sk = keys
    return matvec(sk, encrypt_vector(ck, x, D, B), EncodedMatrix.encode(w, PS, sk.context, B))


def test_declared_statistical_parameter():
    assert convert.SIGMA == convert.MASK_BITS - convert.Y_BITS == 26
    r = convert.mask_ring(20000, F)
    assert int(np.abs(r).max()) < 2 ** (F + convert.MASK_BITS)
    assert int(np.abs(r).max()) > 2 ** (F + convert.MASK_BITS - 1)     # the width is used


def test_ckks_to_shares_is_within_the_declared_error_at_the_declared_range(keys):
    ck, sk = keys
    rng = np.random.default_rng(1)
    w = np.eye(D) * 2 ** convert.Y_BITS                    # outputs at the edge: |y| = 64
    for _ in range(3):
        x = rng.choice([-1.0, 1.0], D) * rng.uniform(0.5, 1.0, D)
        out, s_share = convert.ckks_to_shares_server(sk, _product(keys, w, x), D, F)
        c_share = convert.ckks_to_shares_client(ck, out, D, F)
        want = torch.from_numpy(np.round(w @ x * 2 ** F).astype(np.int64))
        err = (c_share + s_share - want).abs().max().item() / 2 ** F
        assert err <= convert.CONVERSION_ERROR and err > 2 ** -F     # the low-bit flood shows


def test_shares_to_ckks_round_trip(keys):
    ck, sk = keys
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(D, generator=gen, dtype=torch.float64) * 8
    ring = torch.round(x * 2 ** F).long()
    xs = torch.randint(-2 ** 62, 2 ** 62, (D,), generator=gen)
    masked, r = convert.shares_to_ckks_server_mask(xs, F)
    ct = convert.shares_to_ckks_client(ck, ring - xs, masked, F,
                                       lambda z: encrypt_vector(ck, z, D, B))
    ct = convert.shares_to_ckks_server_unmask(sk, ct, r, F,
                                              lambda v: replicate(v, D, B, PS.slots))
    assert np.abs(decrypt_vector(ck, ct, D) - x.numpy()).max() < 2 ** -F


def _slots(keys, ct):
    ck, _ = keys
    pt = sa.Plaintext()
    sa.Decryptor(ck.context, ck.secret_key).decrypt(ct, pt)
    return np.asarray(sa.CKKSEncoder(ck.context).decode_complex(pt))


def test_two_weight_matrices_with_equal_outputs_cannot_be_told_apart(keys):
    """W2 = W1 + u v^T with v orthogonal to x: W1 x = W2 x. The BSGS packing leaves no
    partial sums outside the result (only noise, which is what the imaginary-part attack
    of REFERENCES.md feeds on); after masking and re-randomisation every slot, imaginary
    parts included, is covered by a uniform mask of width 2^33, and the difference between
    W1's and W2's returns is no larger than between two returns of W1."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, D)
    v = rng.normal(0, 1, D)
    v -= v @ x / (x @ x) * x
    w1 = rng.normal(0, 0.3, (D, D))
    w2 = w1 + np.outer(rng.normal(0, 1, D), v)
    c1, c2 = _product(keys, w1, x), _product(keys, w2, x)
    assert np.abs(_slots(keys, c1)[:D].real - _slots(keys, c2)[:D].real).max() < 1e-4
    assert np.abs(_slots(keys, c1)[D:]).max() < 1e-6        # noise only beyond the result

    _, sk = keys

    def protected(c):
        return _slots(keys, convert.ckks_to_shares_server(sk, c, D, F)[0])

    across = np.abs(protected(c1)[D:] - protected(c2)[D:])
    within = np.abs(protected(c1)[D:] - protected(_product(keys, w1, x))[D:])
    # both are differences of independent uniform masks of width 2^33: same scale
    assert 0.5 < np.median(across) / np.median(within) < 2.0
    assert np.median(np.abs(protected(c1).imag)) > 2 ** 30


def test_imaginary_part_regression_recovers_nothing_after_masking(keys):
    """The attack of REFERENCES.md from the client's position: send inputs with random
    imaginary parts; the imaginary half of W (x_re + i x_im) is W x_im, so a least-squares
    fit over a few queries recovers W from an unprotected return. After the conversion's
    mask the same fit recovers nothing (correlation with W near 0)."""
    ck, sk = keys
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.3, (D, D))
    mat = EncodedMatrix.encode(w, PS, sk.context, B)
    encoder = sa.CKKSEncoder(ck.context)
    queries, open_imag, masked_imag = 3 * D, [], []
    xs = rng.normal(0, 1, (queries, D))
    for x_im in xs:
        slots = np.zeros(PS.slots, dtype=complex)
        slots[:2 * D + B] = 1j * np.resize(x_im, 2 * D + B)      # crafted: imaginary input
        pt, ct = sa.Plaintext(), sa.Ciphertext()
        encoder.encode(slots.tolist(), PS.scale, pt)
        sa.Encryptor(ck.context, ck.public_key).encrypt(pt, ct)
        y = matvec(sk, ct, mat)
        open_imag.append(_slots(keys, y)[:D].imag)
        masked_imag.append(_slots(keys, convert.ckks_to_shares_server(sk, y, D, F)[0])[:D].imag)

    def recovered(imag):
        w_hat, *_ = np.linalg.lstsq(xs, np.array(imag), rcond=None)   # imag = xs @ W^T
        return np.corrcoef(w_hat.T.flatten(), w.flatten())[0, 1]

    assert recovered(open_imag) > 0.99          # the attack works on a bare return
    assert abs(recovered(masked_imag)) < 0.3    # chance level (sd ~0.06 over 256 weights)
