"""The dealer process: ``python -m server.dealer --port D``.

A third party that makes correlated randomness for client and server sessions and is
trusted not to collude with either. It is always its own process: a server (or client)
that held the dealer's randomness would hold the other side's secrets. With mTLS (the
default) it releases each party's material only to the certificate holding that role.
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
import threading

from mpc.dealer import DealerSessions, serve_party
from protocols import tls
from protocols.config import TransportConfig
from protocols.endpoints import add_tls_args, make_server, tls_from_args
from protocols.grpc_link import serve_stream, session_id_of
from protocols.metering import Meter
from protocols.wire import pinfer_pb2_grpc as rpc

log = logging.getLogger("pinfer.dealer")


class DealerServicer(rpc.DealerServicer):
    def __init__(self, transport: TransportConfig, insecure: bool):
        self.transport = transport
        self.insecure = insecure
        self.sessions = DealerSessions()

    def Session(self, request_iterator, context):
        role = tls.peer_role(context)
        if role is None and not self.insecure:
            context.abort(16, "no verified client certificate")  # UNAUTHENTICATED
        session_id = session_id_of(context)
        meter = Meter("dealer")
        chan = serve_stream(request_iterator, meter, link=f"dealer-{role or 'peer'}",
                            session_id=session_id, transport=self.transport,
                            integrity=self.insecure)

        def work():
            try:
                got = serve_party(chan, self.sessions, role)
                total = meter.total("offline")
                log.info("session %s: served %s (%d bytes sent)", session_id[:8], got,
                         total.payload_sent)
            except Exception as exc:  # noqa: BLE001 - reported to the peer and the log
                log.warning("session %s: refused or failed: %s", session_id[:8], exc)
                chan.abort(f"dealer: {exc}")
            finally:
                chan.close()

        threading.Thread(target=work, daemon=True).start()
        yield from chan.outgoing()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m server.dealer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add_tls_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="dealer: %(message)s")
    files = tls_from_args(args, "dealer")
    transport = TransportConfig()
    server, port = make_server(files, transport, args.port, args.host)
    rpc.add_DealerServicer_to_server(DealerServicer(transport, files is None), server)
    server.start()
    print(f"dealer listening on {args.host}:{port} ({'insecure' if files is None else 'mTLS'})",
          flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2).wait(5)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"dealer stopped (peak RSS {rss / 2**20:.0f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
