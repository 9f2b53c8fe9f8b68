"""Sign test and ReLU by function secret sharing (one opening, one round).

For x with -2^(n-1) <= x < 2^(n-1) (ring units) and k dropped low bits (k = 0: exact;
k > 0: Circa-style stochastic sign test):
  1. open c = x + r (r uniform in Z_2^64 from the dealer): 8 bytes each way;
  2. y = (c >> k) mod 2^m with m = n - k (n - k + 1 when k > 0), split into its top bit y_hi and y_lo; the dealer
     made a DCF key for alpha = rho_lo, where rho = (r >> k) mod 2^m, with payload
     beta = (1 - 2 rho_hi) [and r (1 - 2 rho_hi) for ReLU];
  3. evaluating the key at y_lo gives shares of u = (1 - 2 rho_hi) 1{y_lo < rho_lo}; with
     the dealer's shares of rho_hi, z = rho_hi + u = rho_hi XOR borrow, and
     b = MSB_m(y - rho) = y_hi + (1 - 2 y_hi) z   (linear: y_hi is public);
  4. ReLU(x) = x (1 - b) = c - r - c b + r b, where r b = y_hi r + (1 - 2 y_hi)(r rho_hi
     + w) and w is the DCF's second payload: still linear, so still one round.
b = 1 exactly when floor(x / 2^k) + carry < 0 (carry in {0, 1} from the dropped bits): with
k = 0 that is x < 0; with k > 0 the test can be wrong only for |x| < 2^k (Circa's faults,
where ReLU's error is below 2^k ulps; the test then runs on m = n - k + 1 bits so that the
carry cannot flip the sign at the top of the range). Outside the range the result is that
of x mod 2^n.

Communication: 1 round; each party sends 8 bytes per element.
Offline: the dealer sends each party the DCF correction words, (m - 1)(17 + 8p) + 8p bytes
per element (p = 1 sign, 2 ReLU), and party 1 also 8p bytes of corrections; r and the
root seeds come from the parties' own PRG seeds.
Leaks: nothing: c is uniform, and a DCF key alone is pseudorandom.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpc import fss, prg

LABEL_R, LABEL_ROOT, LABEL_HI, LABEL_RHI = 11, 12, 13, 14
_U = np.uint64


def params(need) -> tuple[int, int, int, int]:
    """(elements, DCF levels m - 1, dropped bits k, payload words p)."""
    n, k = need.get("bits"), need.get("drop")
    # with dropped bits, floor(x / 2^k) + carry can reach 2^(n-1-k): one more bit keeps it
    # positive (at n = 64 there is none to add: the bound is then x < 2^63 - 2^k)
    m = n - k + (1 if k and n < 64 else 0)
    if not 2 <= m <= 64 or k < 0 or n > 64:
        raise ValueError(f"comparison on {n} bits dropping {k} is not possible")
    return math.prod(need.get("shape")), m - 1, k, 2 if need.get("relu") else 1


def own(need, index: int, seed: bytes, party: int) -> dict[str, torch.Tensor]:
    count, levels, _, p = params(need)
    out = {"r": prg.expand(seed, index, LABEL_R, (count,)),
           "root": prg.expand(seed, index, LABEL_ROOT, (count, 2))}
    if party == 0:
        out["hi"] = prg.expand(seed, index, LABEL_HI, (count,))
        if p == 2:
            out["rhi"] = prg.expand(seed, index, LABEL_RHI, (count,))
    return out


def shapes(need, party: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    count, levels, _, p = params(need)
    out = {"s_cw": ((levels, count, 2), torch.int64), "v_cw": ((levels, count, p), torch.int64),
           "t_cw": ((levels, count), torch.uint8), "final": ((count, p), torch.int64)}
    if party == 1:
        out["hi"] = ((count,), torch.int64)
        if p == 2:
            out["rhi"] = ((count,), torch.int64)
    return out


def _u(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(_U)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


def dealer(need, index: int, s0: bytes, s1: bytes) -> tuple[dict, dict]:
    """Both parties' explicit material (the correction words go to both)."""
    count, levels, k, p = params(need)
    a, b = own(need, index, s0, 0), own(need, index, s1, 1)
    r = _u(a["r"]) + _u(b["r"])
    m = levels + 1
    rho = (r >> _U(k)) & _U((1 << m) - 1) if m < 64 else r >> _U(k)
    rho_hi = rho >> _U(m - 1)
    rho_lo = rho & _U((1 << (m - 1)) - 1)
    with np.errstate(over="ignore"):
        sign = _U(1) - _U(2) * rho_hi
        beta = sign[:, None] if p == 1 else np.stack([sign, r * sign], axis=1)
        cw = fss.gen(rho_lo, beta, levels, _u(a["root"]).reshape(-1, 2),
                     _u(b["root"]).reshape(-1, 2))
        common = {"s_cw": _t(cw["s_cw"]), "v_cw": _t(cw["v_cw"]),
                  "t_cw": torch.from_numpy(cw["t_cw"]), "final": _t(cw["final"])}
        extra = {"hi": _t(rho_hi - _u(a["hi"]))}
        if p == 2:
            extra["rhi"] = _t(r * rho_hi - _u(a["rhi"]))
    return common, {**common, **extra}


def evaluate(party: int, need, m: dict, c: torch.Tensor, relu_x: bool):
    """Given the opened c = x + r (flat int64), this party's shares of b = [x < 0] (integer
    0/1 in the ring) and, if ``relu_x``, of ReLU(x)."""
    count, levels, k, p = params(need)
    cu = _u(c)
    mbits = levels + 1
    y = (cu >> _U(k)) & _U((1 << mbits) - 1) if mbits < 64 else cu >> _U(k)
    y_hi = y >> _U(mbits - 1)
    y_lo = y & _U((1 << levels) - 1)
    cw = {"s_cw": _u(m["s_cw"]), "v_cw": _u(m["v_cw"]), "t_cw": m["t_cw"].numpy(),
          "final": _u(m["final"])}
    out = fss.eval_(party, _u(m["root"]).reshape(-1, 2), cw, y_lo, levels)
    with np.errstate(over="ignore"):
        flip = _U(1) - _U(2) * y_hi
        z = _u(m["hi"]) + out[:, 0]
        bit = flip * z + (y_hi if party == 0 else _U(0))
        if not relu_x:
            return _t(bit), None
        rz = _u(m["rhi"]) + out[:, 1]
        r = _u(m["r"])
        rb = y_hi * r + flip * rz
        relu = (cu if party == 0 else _U(0)) - r - cu * bit + rb
    return _t(bit), _t(relu)
