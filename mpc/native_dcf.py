"""The AES-NI DCF kernel (mpc/native/dcf.c), built on first use and loaded with ctypes.

``library()`` returns the loaded kernel or None. It is None when ``PINFER_NATIVE=0``, when
the CPU lacks AES-NI, when no C compiler is found, or when the built kernel disagrees with
the numpy reference (mpc/fss.py) on a self-test at load; the reason is in ``status()``
and logged once. Callers then use the numpy path, which gives the same bits, slower.

The shared object goes next to the source (or, where that folder is read-only, to the
temporary folder), named by a hash of the source and flags, and is written by an atomic
rename so that processes starting together do not see a half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "native" / "dcf.c"
FLAGS = ["-O3", "-maes", "-msse4.1", "-shared", "-fPIC"]
_U64P = ctypes.POINTER(ctypes.c_uint64)
_state: dict = {}


def _cpu_has_aes() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " aes" in line for line in f)
    except OSError:
        return False


def _build() -> Path:
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:12]
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    for folder in (SOURCE.parent, Path(tempfile.gettempdir()) / f"pinfer-native-{os.getuid()}"):
        target = folder / f"_dcf_{tag}.so"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                continue        # never load code from a folder another user can write
            if target.exists():
                return target
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
            os.close(fd)
        except OSError:
            continue
        try:
            done = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True,
                                  text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed: {done.stderr.strip()[:500]}")
            os.replace(tmp, target)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("no writable folder for the native build")


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(_U64P)


def _self_test(lib) -> None:
    from mpc import fss
    rng = np.random.default_rng(7)
    for n, p in ((1, 1), (8, 2), (31, 1), (31, 2), (64, 1)):
        count = 37
        alpha = rng.integers(0, 2 ** 63, count, dtype=np.uint64) >> np.uint64(64 - n)
        y = rng.integers(0, 2 ** 63, count, dtype=np.uint64) >> np.uint64(64 - n)
        beta = rng.integers(0, 2 ** 63, (count, p), dtype=np.uint64)
        s0, s1 = (rng.integers(0, 2 ** 63, (count, 2), dtype=np.uint64) for _ in range(2))
        want = fss._gen(alpha, beta, n, s0, s1)
        got = _gen(lib, alpha, beta, n, s0, s1)
        for name in want:
            if not np.array_equal(want[name], got[name]):
                raise RuntimeError(f"self-test: key generation differs in {name} (n={n}, p={p})")
        for party, root in ((0, s0), (1, s1)):
            if not np.array_equal(fss._eval(party, root, want, y, n),
                                  _eval(lib, party, root, want, y, n)):
                raise RuntimeError(f"self-test: evaluation differs (n={n}, p={p})")


def library():
    """The loaded kernel, or None (see ``status()`` for why)."""
    if "lib" in _state:
        return _state["lib"]
    lib, reason = None, "native"
    try:
        if os.environ.get("PINFER_NATIVE", "1") == "0":
            raise RuntimeError("disabled by PINFER_NATIVE=0")
        if not _cpu_has_aes():
            raise RuntimeError("this CPU has no AES-NI")
        lib = ctypes.CDLL(str(_build()))
        lib.dcf_set_key.argtypes = [ctypes.c_char_p]
        lib.dcf_eval.restype = lib.dcf_gen.restype = ctypes.c_int
        from mpc import fss
        lib.dcf_set_key(fss._KEY)
        _self_test(lib)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        lib, reason = None, f"numpy ({e})"
        log.warning("native DCF kernel not used: %s; the numpy path gives the same result, "
                    "several times slower", e)
    _state["lib"], _state["reason"] = lib, reason
    return lib


def status() -> str:
    """'native', or 'numpy (<why>)'."""
    library()
    return _state["reason"]


def _c(a: np.ndarray, dtype=np.uint64) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def _gen(lib, alpha, beta, n, s0, s1) -> dict:
    N, p = beta.shape
    alpha, beta, s0, s1 = _c(alpha), _c(beta), _c(s0), _c(s1)
    out = {"s_cw": np.empty((n, N, 2), np.uint64), "v_cw": np.empty((n, N, p), np.uint64),
           "t_cw": np.empty((n, N), np.uint8), "final": np.empty((N, p), np.uint64)}
    rc = lib.dcf_gen(n, p, ctypes.c_longlong(N), _ptr(alpha), _ptr(beta), _ptr(s0), _ptr(s1),
                     _ptr(out["s_cw"]), _ptr(out["v_cw"]),
                     out["t_cw"].ctypes.data_as(ctypes.c_void_p), _ptr(out["final"]))
    if rc:
        raise ValueError(f"native DCF key generation refused n={n}, p={p}")
    return out


def _eval(lib, party, root, cw, y, n) -> np.ndarray:
    N, p = cw["final"].shape
    root, y = _c(root), _c(y)
    s_cw, v_cw, final = _c(cw["s_cw"]), _c(cw["v_cw"]), _c(cw["final"])
    t_cw = _c(cw["t_cw"], np.uint8)
    if s_cw.shape != (n, N, 2) or v_cw.shape != (n, N, p) or t_cw.shape != (n, N) \
            or root.shape != (N, 2) or y.shape != (N,):
        raise ValueError("DCF key arrays do not match the input count or the level count")
    out = np.empty((N, p), np.uint64)
    rc = lib.dcf_eval(party, n, p, ctypes.c_longlong(N), _ptr(root), _ptr(s_cw), _ptr(v_cw),
                      t_cw.ctypes.data_as(ctypes.c_void_p), _ptr(final), _ptr(y), _ptr(out))
    if rc:
        raise ValueError(f"native DCF evaluation refused n={n}, p={p}")
    return out
