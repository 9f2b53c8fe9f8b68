"""mpc.native_dcf: the AES-NI DCF kernel gives the numpy reference's bits exactly.

* on a machine with a C compiler and AES-NI (this project's machines and CI), the kernel
  builds and loads: a broken build must fail here, not fall back silently;
* key generation and each party's evaluation equal mpc/fss.py's numpy reference for every
  width and payload, at counts that are and are not multiples of the kernel's key group;
* PINFER_NATIVE=0 selects the numpy path, which still computes the comparison.
All test data comes from seeded numpy generators.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mpc import fss, native_dcf

U = np.uint64


def _uniform(rng, shape, n=64):
    x = rng.integers(0, 2 ** 64, size=shape, dtype=np.uint64)
    return x & U((1 << n) - 1) if n < 64 else x


def test_kernel_loads_where_it_can():
    can = platform.machine() == "x86_64" and native_dcf._cpu_has_aes() and \
        (shutil.which("cc") or shutil.which("gcc")) and os.environ.get("PINFER_NATIVE") != "0"
    if not can:
        pytest.skip("no AES-NI, no C compiler, or disabled")
    assert native_dcf.library() is not None, native_dcf.status()
    assert native_dcf.status() == "native"


@pytest.mark.parametrize("p", (1, 2))
@pytest.mark.parametrize("n", (1, 5, 24, 31, 40, 64))
@pytest.mark.parametrize("count", (0, 1, 31, 33, 100))
def test_kernel_equals_numpy_reference(n, p, count):
    lib = native_dcf.library()
    if lib is None:
        pytest.skip(native_dcf.status())
    rng = np.random.default_rng(1000 * n + 10 * p + count)
    alpha, y = _uniform(rng, (count,), n), _uniform(rng, (count,), n)
    y[: count // 4] = alpha[: count // 4]                          # the edge y = alpha
    beta, s0, s1 = _uniform(rng, (count, p)), _uniform(rng, (count, 2)), _uniform(rng, (count, 2))
    want = fss._gen(alpha, beta, n, s0, s1)
    got = native_dcf._gen(lib, alpha, beta, n, s0, s1)
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    for party, root in ((0, s0), (1, s1)):
        ref = fss._eval(party, root, want, y, n)
        assert np.array_equal(native_dcf._eval(lib, party, root, want, y, n), ref)
    with np.errstate(over="ignore"):
        total = fss.eval_(0, s0, got, y, n) + fss.eval_(1, s1, got, y, n)
    assert np.array_equal(total, np.where((y < alpha)[:, None], beta, U(0)))


def test_kernel_refuses_mismatched_arrays():
    lib = native_dcf.library()
    if lib is None:
        pytest.skip(native_dcf.status())
    rng = np.random.default_rng(5)
    alpha, beta = _uniform(rng, (8,), 16), _uniform(rng, (8, 1))
    s0, s1 = _uniform(rng, (8, 2)), _uniform(rng, (8, 2))
    cw = fss.gen(alpha, beta, 16, s0, s1)
    with pytest.raises(ValueError, match="do not match"):
        native_dcf._eval(lib, 0, s0, cw, alpha[:7], 16)           # one input short
    with pytest.raises(ValueError, match="do not match"):
        native_dcf._eval(lib, 0, s0, cw, alpha, 15)               # wrong level count


def test_disabled_kernel_falls_back_to_numpy():
    code = ("import numpy as np; from mpc import fss, native_dcf\n"
            "rng = np.random.default_rng(2)\n"
            "a = rng.integers(0, 2**20, 50, dtype=np.uint64); y = rng.integers(0, 2**20, 50, dtype=np.uint64)\n"
            "b = np.ones((50, 1), np.uint64); s0 = rng.integers(0, 2**63, (50, 2), dtype=np.uint64)\n"
            "s1 = rng.integers(0, 2**63, (50, 2), dtype=np.uint64); cw = fss.gen(a, b, 20, s0, s1)\n"
            "t = fss.eval_(0, s0, cw, y, 20) + fss.eval_(1, s1, cw, y, 20)\n"
            "assert (t[:, 0] == (y < a)).all()\n"
            "print(native_dcf.status())\n")
    env = {**os.environ, "PINFER_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy (disabled by PINFER_NATIVE=0)"
    assert "native DCF kernel not used" in out.stderr
