"""Both parties and the dealer on threads of this process, over in-memory channels: the
same protocol code and meters as between processes, for benchmarks that sweep many
small runs (the dealer then counts as "in-process-test" in records)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import torch

from mpc.dealer import DealerSessions, serve_party
from protocols.channel import memory_pair, run_pair
from protocols.config import Config
from protocols.families.base import RoleContext
from protocols.metering import Meter
from protocols.registry import get_family


def run_in_process(spec, weights: dict, x: torch.Tensor, config: Config | None = None,
                   session_id: str = "local", new_tokens: int = 0, roles: dict | None = None,
                   protocol: str = "mpc", recv_timeout: float = 30.0):
    """One inference of ``spec`` on x under ``protocol`` (a family with a dealer); returns
    (output, client meter, server meter). ``roles``, if given, receives the client and
    server role objects."""
    config = config or Config()
    meters, dmeter = (Meter("client"), Meter("server")), Meter("dealer")
    chans = memory_pair(meters, session_id=session_id, recv_timeout=recv_timeout)
    sessions = DealerSessions()

    def connect_for(meter):
        def connect():
            mine, theirs = memory_pair((meter, dmeter), link="dealer", session_id=session_id,
                                       recv_timeout=recv_timeout)
            threading.Thread(target=serve_party, args=(theirs, sessions, None), daemon=True).start()
            return mine     # a dealer failure surfaces as the party's receive timeout
        return connect

    with tempfile.TemporaryDirectory(prefix="pinfer-local-") as store:
        ctxs = [RoleContext(spec=spec, config=config, channel=chans[i], meter=meters[i],
                            session_id=session_id, input_shape=tuple(x.shape), inferences=1,
                            store_root=Path(store), dealer_connect=connect_for(meters[i]),
                            new_tokens=new_tokens)
                for i in range(2)]
        family = get_family(protocol)
        client, server = family.client(ctxs[0]), family.server(ctxs[1], weights)
        if roles is not None:
            roles.update(client=client, server=server)
        try:
            y, _ = run_pair(lambda: (client.offline(), client.online(x))[1],
                            lambda: (server.offline(), server.online()), timeout=3600)
        finally:
            client.close()
            server.close()
    return y, meters[0], meters[1]
