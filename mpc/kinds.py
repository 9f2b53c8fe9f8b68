"""Every kind of correlated randomness, behind one dispatch: what a party expands from its
own seed, what the dealer sends each party, and the names, shapes and dtypes of the latter
(checked on receipt and again at use)."""

from __future__ import annotations

import torch

from mpc import bitdecomp, compare, material

_MODULES = {"dcf": compare, "bitdecomp": bitdecomp}


def own(need, index: int, seed: bytes, party: int) -> dict[str, torch.Tensor]:
    mod = _MODULES.get(need.kind)
    return mod.own(need, index, seed, party) if mod else material.own_shares(need, index, seed, party)


def explicit_shapes(need, party: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    mod = _MODULES.get(need.kind)
    if mod:
        return mod.shapes(need, party)
    if party == 0:
        return {}
    return {k: (v, torch.int64) for k, v in material.correction_shapes(need).items()}


def dealer_material(need, index: int, s0: bytes, s1: bytes, needs, masks) -> tuple[dict, dict]:
    """(party 0's, party 1's) explicit arrays for item ``index``."""
    mod = _MODULES.get(need.kind)
    if mod:
        return mod.dealer(need, index, s0, s1)
    return {}, material.server_correction(need, index, s0, s1, needs, masks)
