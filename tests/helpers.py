"""Test helpers: run both parties (and an in-process dealer) over in-memory channels."""

from __future__ import annotations

import threading

from mpc.dealer import DealerSessions, serve_party
from protocols.channel import memory_pair, run_pair
from protocols.config import Config
from protocols.families.base import RoleContext
from protocols.metering import Meter


class InProcessDealer:
    """A dealer on threads, for unit tests only ("in-process-test" in records)."""

    def __init__(self):
        self.sessions = DealerSessions()
        self.meter = Meter("dealer")
        self.errors: list[BaseException] = []

    def connect_for(self, party_meter: Meter, session_id: str):
        def connect():
            mine, theirs = memory_pair((party_meter, self.meter), link="dealer",
                                       session_id=session_id)

            def serve():
                try:
                    serve_party(theirs, self.sessions, None)
                except BaseException as exc:  # noqa: BLE001 - surfaced by the test
                    self.errors.append(exc)

            threading.Thread(target=serve, daemon=True).start()
            return mine
        return connect


def make_contexts(spec, input_shape, tmp_path, *, config=None, inferences=1, session_id="s1",
                  new_tokens=0, ee_key=None, ee_deployment=None):
    """Client and server RoleContexts joined by an in-memory channel and a dealer."""
    config = config or Config()
    meters = (Meter("client"), Meter("server"))
    chans = memory_pair(meters, session_id=session_id)
    dealer = InProcessDealer()
    ctxs = [RoleContext(spec=spec, config=config, channel=chans[i], meter=meters[i],
                        session_id=session_id, input_shape=tuple(input_shape),
                        inferences=inferences, store_root=tmp_path / "store",
                        dealer_connect=dealer.connect_for(meters[i], session_id),
                        new_tokens=new_tokens, ee_key=ee_key if i == 0 else None,
                        ee_deployment=ee_deployment if i == 1 else None)
            for i in range(2)]
    return ctxs[0], ctxs[1], dealer


def run_family(family, spec, weights, inputs, tmp_path, **kw):
    """Offline once, then one online run per input; returns (outputs, client ctx, server ctx, roles)."""
    cctx, sctx, dealer = make_contexts(spec, inputs[0].shape, tmp_path,
                                       inferences=len(inputs), **kw)
    client, server = family.client(cctx), family.server(sctx, weights)

    def run_client():
        client.offline()
        return [client.online(x) for x in inputs]

    def run_server():
        server.offline()
        for _ in inputs:
            server.online()

    outs, _ = run_pair(run_client, run_server)
    return outs, cctx, sctx, (client, server)


def planned_online_bytes(needs) -> int:
    """Bytes each party sends online for one inference of ``needs`` (protocol formulas:
    mpc.protocol, mpc.compare, mpc.bitdecomp), output reveal excluded."""
    import math

    from mpc import bitdecomp

    total = 0
    for need in needs.items:
        if need.kind == "bilinear":
            n = math.prod(need.get("a_shape"))
            total += 8 * (n if need.get("const") else n + math.prod(need.get("b_shape")))
            continue
        n = math.prod(need.get("shape"))
        if need.kind == "mul":                  # E = X - A, and D = Y - B of B's own shape
            total += 8 * (n + math.prod(need.get("b_shape", need.get("shape"))))
        elif need.kind == "bitdecomp":
            total += (16 * bitdecomp.params(need)[2] + 1) * n
        else:                                   # square, trunc, dcf: one masked opening
            total += 8 * n
    return total
