"""Load, a CI slice of ``python -m benchmarks reliability``: concurrent clients against one
server, every result checked against plaintext, nothing left in any store."""

from __future__ import annotations

from benchmarks import reliability_load


def test_concurrent_clients_get_correct_results_and_leave_no_material(tmp_path):
    r = reliability_load.run(clients=4, sessions=12, work=tmp_path, progress=lambda s: None)
    assert r["correct"] == 12, r["failures"]
    assert (r["wrong"], r["failed"], r["missing"], r["hung_clients"]) == (0, 0, 0, 0)
    assert r["server_alive"] and r["leftover_files"] == 0
    assert 0 < r["server_peak_rss_bytes"] < 2 * 2**30
