"""Bad frames (issue #9), the CI slice of ``benchmarks.reliability_frames``: hostile frames
in-process and against real dealer and server processes; after each batch the server is
alive, SERVING, has logged no traceback, burned every failed session's material, and
serves the next valid client correctly."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from benchmarks.bad_clients import corrupt_through_proxy
from benchmarks.launch import WIREPROXY
from benchmarks.bad_streams import GRPC_KINDS, REPLAY_CASES, fuzz_over_grpc, replay_over_grpc
from benchmarks.launch import Deployment
from benchmarks.reliability_frames import KINDS, fuzz_in_process
from server import health

MODEL = "digits-mlp"


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with Deployment(MODEL, ["mpc"], insecure=True, workdir=tmp_path_factory.mktemp("bad")) as d:
        yield d


def assert_healthy(checks: dict) -> None:
    assert checks["alive"], "server or dealer exited"
    assert checks["health"] == "SERVING"
    assert checks["next_client_correct"], "the next valid client did not get plaintext's answer"
    assert checks["log_problems"] == 0, checks["log_examples"]
    assert checks["leftover_material"] == 0, "a failed session's material was not burned"


def test_in_process_fuzz_refuses_every_kind_cleanly():
    r = fuzz_in_process(1000, seed=1)
    rows = {row["case"]: row for row in r["rows"]}
    assert set(rows) == set(KINDS) and sum(row["cases"] for row in rows.values()) == 1000
    for kind, row in rows.items():
        assert row["crashes"] == 0 and row["hangs"] == 0, row["examples"]
        assert row["refused"] > 0, kind                 # the fuzz reaches every check
    # a wrong step, session, size, dtype or shape is always refused; only a flipped body
    # bit can pass unseen (no checksum in the frame: integrity is TLS's job)
    for kind in ("wrong step", "other session", "wrong size", "wrong dtype", "wrong shape",
                 "replayed or duplicated", "peer abort", "truncated body"):
        assert rows[kind]["refused"] == rows[kind]["cases"], rows[kind]["examples"]
    assert r["slowest_case_s"] < 1.0


def test_malformed_streams_over_grpc_are_refused_naming_the_problem(dep):
    r = fuzz_over_grpc(len(GRPC_KINDS), seed=1, dep=dep)          # one stream per kind
    assert {row["case"] for row in r["rows"]} == set(GRPC_KINDS)
    for row in r["rows"]:
        assert row["crashes"] == 0 and row["hangs"] == 0, row
        assert row["refused"] == row["cases"], row
        assert row["reason_named"] == row["cases"], (row, r["other_reasons"])
    assert r["server"]["sessions_failed_logged"] >= len(GRPC_KINDS) - 3   # all that opened one
    assert_healthy(r["server"])


def test_replayed_duplicated_and_other_session_frames_are_refused(dep):
    r = replay_over_grpc(repeats=1, dep=dep)
    assert [row["case"] for row in r["rows"]] == list(REPLAY_CASES)
    for row in r["rows"]:
        assert row["crashes"] == 0 and row["hangs"] == 0 and row["accepted"] == 0, row
        assert row["refused_naming_the_frame"] == row["cases"], row   # at its first read
        assert row["reused_preprocessing"] == 0, row
        assert row["wrong_results"] == 0, row                # the robbed session still works
        assert row["material_burned"] == row["cases"], row
    assert_healthy(r["server"])


needs_proxy = pytest.mark.skipif(not WIREPROXY.is_file(),
                                 reason=f"the wire proxy {WIREPROXY} is not beside the checkout")


@needs_proxy
def test_corruption_in_flight_insecure(dep):
    """Flipped bits in the preface, the handshake and mid-session (inside the masked
    weights): no crash, no hang, the server healthy. Under --insecure nothing guards a
    frame's body (TLS is the integrity check), so a flipped body bit can give a wrong
    result: the benchmark counts those (wrong_results), it does not hide them."""
    r = corrupt_through_proxy(insecure=True, n=4, dep=dep)
    row = r["rows"][0]
    assert row["cases"] == 4 and row["crashes"] == 0 and row["hangs"] == 0, row
    assert row["clean_errors"] + row["correct"] + row["wrong_results"] \
        + row["not_reached"] == 4, row
    # the mid-session bit reached the session: it did not come back unchanged
    assert r["runs"][max(r["runs"], key=int)]["outcome"] in ("error", "wrong"), r["runs"]
    assert_healthy(r["server"])


@needs_proxy
def test_corruption_in_flight_mtls_ends_cleanly(tmp_path):
    r = corrupt_through_proxy(insecure=False, n=4, workdir=tmp_path)
    row = r["rows"][0]
    assert row["crashes"] == 0 and row["hangs"] == 0 and row["wrong_results"] == 0, row
    assert row["clean_errors"] + row["correct"] + row["not_reached"] == 4, row
    mid = r["runs"][max(r["runs"], key=int)]          # inside the weights: TLS refuses it
    assert mid["outcome"] == "error", mid
    assert any(w in mid["detail"].lower() for w in ("corrupted", "unavailable")), mid
    assert_healthy(r["server"])


def test_health_service_speaks_the_standard_protocol():
    """grpc.health.v1 on the wire (field numbers and enum values of the standard
    health.proto), SERVING until shutdown, NOT_FOUND for a service it does not know."""
    assert health.HealthCheckResponse(status=1).SerializeToString() == b"\x08\x01"
    assert health.HealthCheckRequest(service="x").SerializeToString() == b"\n\x01x"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    h = health.Health()
    h.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert health.check(ch) == "SERVING" and health.check(ch, health.PARTY) == "SERVING"
        with pytest.raises(grpc.RpcError) as err:
            health.check(ch, "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        h.set_serving(False)
        assert health.check(ch) == "NOT_SERVING"
    finally:
        ch.close()
        server.stop(0)
