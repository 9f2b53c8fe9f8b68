"""Protocol families by name. A family is listed here only when it works end to end."""

from __future__ import annotations

from protocols.families.base import Family
from protocols.families.crypten_family import CryptenFamily
from protocols.families.equivariant import EquivariantFamily
from protocols.families.he_family import HeFamily
from protocols.families.hybrid import HybridFamily
from protocols.families.plaintext import PlaintextFamily
from protocols.families.secret_sharing import SecretSharingFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (PlaintextFamily(), SecretSharingFamily(),
                                                   HeFamily(), HybridFamily(),
                                                   EquivariantFamily(), CryptenFamily())}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; available: {sorted(FAMILIES)}") from None
