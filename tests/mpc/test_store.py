"""protocols.store.MaterialStore: material is consumed once, in plan order; nothing is
reused or regenerated; files are private; a burned or damaged store refuses use."""

from __future__ import annotations

import json
import re
import os
import stat
from pathlib import Path

import pytest
import torch

from mpc import protocol
from mpc.protocol import CLIENT, SERVER, Party
from protocols.needs import Need, Needs
from protocols import store_root
from protocols.store import ALIGN, MaterialError, MaterialStore, QuotaError
from tests.mpc.harness import ProtocolPair, needs_of, ring_random, split

MUL = Need.make("mul", "layer0", shape=(2, 3))
SQ = Need.make("square", "layer1", shape=(4,))
TR = Need.make("trunc", "layer1", shape=(4,), frac_bits=16)


def make_store(root, needs, *, session="sess1", party="server"):
    return MaterialStore(root, party=party, session_id=session, family="mpc", frac_bits=16,
                         needs=needs)


def filled_store(root, needs, **kw):
    """A store with a seed and one explicit record per item (distinct values per item)."""
    store = make_store(root, needs, **kw)
    store.write_seed(bytes(range(16)))
    for i in range(len(needs)):
        need = needs.at(i)
        shape = need.get("out_shape") if need.kind == "bilinear" else need.get("shape")
        names = ("msb", "mid") if need.kind == "trunc" else ("c",)
        store.append(i, need.kind, {n: torch.full(shape, 1000 * i + j, dtype=torch.int64)
                                    for j, n in enumerate(names)})
    store.finish_writing()
    return store


def test_items_come_once_and_in_order(tmp_path):
    needs = Needs((MUL,), inferences=3)
    store = filled_store(tmp_path, needs)
    seen = []
    for i in range(3):
        index, arrays = store.take(MUL, explicit=True)
        seen.append(index)
        assert torch.equal(arrays["c"], torch.full((2, 3), 1000 * i))
        assert store.remaining == 2 - i
    assert seen == [0, 1, 2]  # taking "the same item" again gives the next one, never a repeat
    with pytest.raises(MaterialError, match="exhausted after 3 items"):
        store.take(MUL, explicit=True)


def test_item_not_matching_the_plan_raises(tmp_path):
    needs = needs_of(SQ, TR)
    store = filled_store(tmp_path, needs)
    for wrong in (TR,                                                  # wrong kind
                  Need.make("square", "layer1", shape=(5,)),           # wrong shape
                  Need.make("square", "other", shape=(4,)),            # wrong scope
                  Need.make("trunc", "layer1", shape=(4,), frac_bits=18)):
        with pytest.raises(MaterialError, match="was planned as"):
            store.take(wrong, explicit=True)
    assert store.cursor == 0
    store.take(SQ, explicit=True)
    with pytest.raises(MaterialError, match="planned as trunc"):
        store.take(Need.make("trunc", "layer1", shape=(4,), frac_bits=18), explicit=True)


def test_client_side_take_needs_no_file_but_checks_the_plan(tmp_path):
    needs = needs_of(SQ, TR)
    store = make_store(tmp_path, needs, party="client")
    store.write_seed(bytes(16))
    assert store.take(SQ, explicit=False) == (0, {})
    with pytest.raises(MaterialError):
        store.take(SQ, explicit=False)
    assert store.take(TR, explicit=False) == (1, {})
    with pytest.raises(MaterialError, match="exhausted"):
        store.take(TR, explicit=False)


def test_records_must_arrive_in_plan_order(tmp_path):
    needs = needs_of(SQ, TR)
    store = make_store(tmp_path, needs)
    c = {"c": torch.zeros(4, dtype=torch.int64)}
    with pytest.raises(MaterialError, match="does not match the plan"):
        store.append(0, "trunc", c)
    store.append(0, "square", c)
    with pytest.raises(MaterialError, match="record 0 arrived after record 0"):
        store.append(0, "square", c)  # items without explicit material may be skipped,
    # but records never go backwards
    store.append(1, "trunc", {"msb": torch.zeros(4, dtype=torch.int64),
                              "mid": torch.zeros(4, dtype=torch.int64)})
    with pytest.raises(MaterialError, match="past the end"):
        store.append(2, "trunc", c)


def test_no_seed_raises(tmp_path):
    store = make_store(tmp_path, needs_of(SQ))
    with pytest.raises(MaterialError, match="no seed"):
        _ = store.seed


def test_constant_mask_opened_only_once(tmp_path):
    store = make_store(tmp_path, needs_of(SQ))
    store.mark_opened("fc1.weight")
    store.mark_opened("fc2.weight")  # another key is fine
    with pytest.raises(MaterialError, match="opened twice"):
        store.mark_opened("fc1.weight")
    # constants can be read many times (they are the reused kind)
    w = torch.arange(12, dtype=torch.int64).reshape(3, 4) - 5
    store.put_constant("fc1.weight", w)
    assert torch.equal(store.constant("fc1.weight"), w)
    assert torch.equal(store.constant("fc1.weight"), w)
    with pytest.raises(MaterialError, match="no constant-operand material"):
        store.constant("fc3.weight")


def test_burn_deletes_everything_and_refuses_use(tmp_path):
    needs = needs_of(MUL, MUL)
    store = filled_store(tmp_path, needs)
    store.put_constant("w", torch.ones(2, dtype=torch.int64))
    store.take(MUL, explicit=True)  # leaves an open reader
    assert store.storage_bytes() > 0
    store.burn()
    assert not store.dir.exists()
    assert store.storage_bytes() == 0
    for use in (lambda: store.take(MUL, explicit=True), lambda: store.seed,
                lambda: store.constant("w"), lambda: store.put_constant("w", torch.ones(1)),
                lambda: store.append(1, "mul", {})):
        with pytest.raises(MaterialError, match="burned"):
            use()


def test_files_are_owner_only(tmp_path):
    old = os.umask(0)  # the store must not rely on the process umask
    try:
        store = filled_store(tmp_path / "root", needs_of(SQ, TR))
        store.put_constant("fc1.weight", torch.ones(3, dtype=torch.int64))
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o700   # a new root too
    files = sorted(p.name for p in store.dir.iterdir())
    assert files == ["const-fc1_weight.bin", "header.json", "material.bin", "seed.bin"]
    for p in store.dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    # the header names the public facts
    header = json.loads((store.dir / "header.json").read_text())
    assert header == {"family": "mpc", "ring": "Z_2^64", "frac_bits": 16, "session": "sess1",
                      "party": "server", "needs": needs_of(SQ, TR).digest(), "items": 2}


def test_same_session_cannot_be_created_twice(tmp_path):
    make_store(tmp_path, needs_of(SQ))
    with pytest.raises(MaterialError, match="already exists"):
        make_store(tmp_path, needs_of(SQ))
    make_store(tmp_path, needs_of(SQ), party="client")  # the other party's store is separate


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a.b", "x" * 65, "a\\b"])
def test_bad_session_ids_refused(tmp_path, bad):
    with pytest.raises(MaterialError, match="bad session id"):
        make_store(tmp_path, needs_of(SQ), session=bad)


def _aligned(pos: int) -> int:
    return pos + (-pos % ALIGN)


def _record_bounds(store):
    """(file bytes, end of record 0's JSON header, end of record 0)."""
    data = (store.dir / "material.bin").read_bytes()
    n = int.from_bytes(data[:4], "little")
    first_end = _aligned(4 + n) + 8 * 4   # SQ: one array "c" of 4 elements, aligned
    return data, 4 + n, first_end


def test_truncated_material_raises_on_take(tmp_path):
    needs = needs_of(SQ, SQ)
    store = filled_store(tmp_path, needs)
    path = store.dir / "material.bin"
    data, head_end, first_end = _record_bounds(store)
    n = int.from_bytes(data[first_end:first_end + 4], "little")
    assert len(data) == _aligned(first_end + 4 + n) + 8 * 4
    assert _aligned(4 + n) % ALIGN == 0 and data[4 + n:_aligned(4 + n)] == bytes(_aligned(4 + n) - 4 - n)
    # cut inside the array data of the second record
    path.write_bytes(data[:-5])
    store.take(SQ, explicit=True)
    with pytest.raises(MaterialError, match="truncated"):
        store.take(SQ, explicit=True)
    # cut exactly after the first record
    store2 = filled_store(tmp_path, needs, session="sess2")
    (store2.dir / "material.bin").write_bytes(data[:first_end])
    store2.take(SQ, explicit=True)
    with pytest.raises(MaterialError, match="missing"):
        store2.take(SQ, explicit=True)


def test_truncated_material_raises_material_error_at_every_cut(tmp_path):
    needs = needs_of(SQ)
    probe = filled_store(tmp_path, needs, session="probe")
    data, head_end, first_end = _record_bounds(probe)
    wrong = []
    for cut in range(first_end):
        store = filled_store(tmp_path, needs, session=f"cut{cut}")
        (store.dir / "material.bin").write_bytes(data[:cut])
        try:
            store.take(SQ, explicit=True)
        except MaterialError:
            continue
        except Exception as exc:  # noqa: BLE001 - that is the bug
            wrong.append((cut, type(exc).__name__))
        else:
            wrong.append((cut, "no error"))
        store.burn()
    assert wrong == [], f"{len(wrong)} cuts not refused with MaterialError, e.g. {wrong[:3]}"


def test_record_of_another_index_raises(tmp_path):
    needs = needs_of(SQ, SQ)
    store = filled_store(tmp_path, needs)
    data, _, first_end = _record_bounds(store)
    # swap the two records: the store must notice that record 1 came where 0 was due
    (store.dir / "material.bin").write_bytes(data[first_end:] + data[:first_end])
    with pytest.raises(MaterialError, match="record 1 where 0 was due"):
        store.take(SQ, explicit=True)


def test_protocol_refuses_a_party_that_drifts_from_the_plan(tmp_path):
    """Both parties planned a square; one asking for a mul fails before anything is sent."""
    gen = torch.Generator().manual_seed(3)
    x = split(ring_random((4,), gen), gen)
    pair = ProtocolPair(needs_of(SQ), tmp_path)
    with pytest.raises(MaterialError, match="planned as square"):
        pair.run(lambda p: protocol.mul(p, x[p.index], x[p.index], "layer1"))
    assert pair.meters[CLIENT].total("online").messages_sent == 0
    assert pair.meters[SERVER].total("online").messages_sent == 0


def test_party_take_combines_seed_shares_and_corrections(tmp_path):
    """The server's take returns its PRG shares plus the stored corrections; the client's
    only its PRG shares. The same item cannot be had twice from one store."""
    pair = ProtocolPair(needs_of(TR), tmp_path)
    client, server = pair.parties
    m0, m1 = client.take(TR), server.take(TR)
    assert set(m0) == {"r", "msb", "mid"} and set(m1) == {"r", "msb", "mid"}
    for p in (client, server):
        with pytest.raises(MaterialError, match="exhausted"):
            p.take(TR)
    assert isinstance(client, Party) and client.name == "client" and server.name == "server"


def test_missing_material_file_raises(tmp_path):
    store = make_store(tmp_path, needs_of(SQ))
    store.write_seed(bytes(16))
    with pytest.raises(MaterialError, match="no explicit material"):
        store.take(SQ, explicit=True)


def test_wrong_shaped_correction_is_refused(tmp_path):
    needs = needs_of(TR)
    store = make_store(tmp_path, needs)
    store.write_seed(bytes(range(16)))
    one = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(MaterialError):
        store.append(0, "trunc", {"msb": one, "mid": one})   # the plan says shape (4,)
        store.finish_writing()
        Party(SERVER, None, store, 16).take(TR)


# -- housekeeping: quota, orphans, expiry ---------------------------------------------------

MUL_BYTES = 2 * 3 * 8          # one "c" record of MUL


def test_quota_exceeded_names_quota_and_size_and_burns_the_session(tmp_path):
    root = tmp_path / "q"
    store_root.configure(root, quota_bytes=4096)
    other = make_store(root, needs_of(SQ), session="other")     # a bystander under the root
    big = Needs((MUL,), inferences=100)                          # 100 records of 48 bytes
    store = make_store(root, big)
    store.write_seed(bytes(16))
    with pytest.raises(QuotaError) as err:
        for i in range(100):
            store.append(i, "mul", {"c": torch.zeros(2, 3, dtype=torch.int64)})
    assert 0 < i < 100                                           # some records fitted
    head = json.dumps({"index": i, "kind": "mul", "arrays": [["c", [2, 3], "<i8"]]})
    msg = str(err.value)
    assert "store quota exceeded" in msg and "quota of 4096 bytes" in msg
    wrote = int(re.search(r"writing (\d+) bytes", msg).group(1))
    # the record, plus the padding that puts its array on an ALIGN boundary
    assert 4 + len(head) + MUL_BYTES <= wrote < 4 + len(head) + MUL_BYTES + ALIGN
    assert str(root) in msg
    assert isinstance(err.value, MaterialError)
    assert not store.dir.exists()                                # the partial session burned
    with pytest.raises(MaterialError, match="burned"):
        store.take(MUL, explicit=True)
    assert other.dir.exists()                                    # the bystander is untouched
    # the burned session's bytes are free again: a new session of the same size fits ...
    again = make_store(root, Needs((MUL,), inferences=20), session="again")
    for i in range(20):
        again.append(i, "mul", {"c": torch.zeros(2, 3, dtype=torch.int64)})
    # ... and the quota counts every store under the root, not one at a time
    third = make_store(root, big, session="third")
    with pytest.raises(QuotaError):
        for i in range(100):
            third.append(i, "mul", {"c": torch.zeros(2, 3, dtype=torch.int64)})
    assert store_root.root_bytes(root) <= 4096


def test_quota_refuses_constants_and_counts_what_is_already_on_disk(tmp_path):
    root = tmp_path / "q2"
    (root / "outsider").mkdir(parents=True)
    (root / "outsider" / "blob").write_bytes(bytes(3000))       # not ours, but it uses room
    store_root.configure(root, quota_bytes=4096)
    store = make_store(root, needs_of(SQ))
    store.put_constant("small", torch.ones(8, dtype=torch.int64))
    with pytest.raises(QuotaError, match="quota of 4096 bytes"):
        store.put_constant("fc1.weight", torch.ones(200, dtype=torch.int64))   # 1600 bytes
    assert not store.dir.exists()
    assert (root / "outsider" / "blob").exists()                 # never touched


def test_policy_values_are_checked_and_sizes_parse():
    with pytest.raises(ValueError, match="positive"):
        store_root.StorePolicy(quota_bytes=0)
    assert store_root.parse_size("2G") == 2 << 30
    assert store_root.parse_size("500M") == 500 << 20
    assert store_root.parse_size("4096") == 4096
    with pytest.raises(ValueError, match="expected a number of bytes"):
        store_root.parse_size("lots")


KILLED_OWNER = """
import os, signal, sys
from protocols.needs import Need, Needs
from protocols.store import MaterialStore
s = MaterialStore(sys.argv[1], party="client", session_id="dead", family="mpc",
                  frac_bits=16, needs=Needs((Need.make("square", "l", shape=(4,)),), (), 1))
s.write_seed(bytes(16))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_material_of_a_killed_owner_is_swept_and_a_live_store_is_kept(tmp_path):
    import subprocess
    import sys
    root = tmp_path / "orphans"
    live = make_store(root, needs_of(SQ), session="live")
    repo = Path(store_root.__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", KILLED_OWNER, str(root)], cwd=repo,
                         capture_output=True, timeout=60)
    assert res.returncode == -9, res.stderr
    dead = root / "dead-client"
    assert (dead / "seed.bin").exists()                          # the killed process left it
    assert store_root.sweep(root) == ["dead-client"]
    assert not dead.exists() and live.dir.exists()
    # a new session sweeps too: leave another orphan by dropping a store without burning
    leaked = make_store(root, needs_of(SQ), session="leaked")
    leaked_dir = leaked.dir
    os.close(leaked._lock_fd)                                    # as if its process died
    leaked._lock_fd = None
    make_store(root, needs_of(SQ), session="next")
    assert not leaked_dir.exists() and live.dir.exists()


def test_expired_material_is_deleted_and_a_live_store_refuses_after_its_ttl(tmp_path):
    root = tmp_path / "ttl"
    store_root.configure(root, ttl_s=3600)
    old = make_store(root, needs_of(SQ), session="old")
    fresh = make_store(root, needs_of(SQ), session="fresh")
    old.write_seed(bytes(16))
    two_hours_ago = os.path.getmtime(old.dir / "header.json") - 7200
    os.utime(old.dir / "header.json", (two_hours_ago, two_hours_ago))
    assert store_root.sweep(root) == ["old-server"]               # expired though its owner lives
    assert fresh.dir.exists()
    assert store_root.sweep(root, max_age_s=1e-9) == ["fresh-server"]
    # the owner of a store past its TTL burns it and refuses use, naming the TTL
    mine = make_store(root, needs_of(SQ), session="mine")
    mine.write_seed(bytes(16))
    mine._t0 -= 3601                                             # an hour and a second later
    with pytest.raises(MaterialError, match="expired after 3600 s"):
        mine.take(SQ, explicit=False)
    assert not mine.dir.exists()


def test_sweep_leaves_half_made_stores_in_their_grace_and_foreign_things_alone(tmp_path):
    root = tmp_path / "half"
    root.mkdir()
    (root / "notes.txt").write_text("not material")
    (root / "not-a-store").mkdir()                               # no header: not ours
    young = root / ".tmp-abc-client-0001"
    stale = root / ".tmp-def-client-0002"
    young.mkdir()
    stale.mkdir()
    then = os.path.getmtime(stale) - 2 * store_root.TMP_GRACE_S
    os.utime(stale, (then, then))
    assert store_root.sweep(root, max_age_s=1e-9) == [stale.name]
    assert young.exists() and (root / "notes.txt").exists() and (root / "not-a-store").exists()


def test_taken_arrays_are_aligned_views_and_writes_never_reach_the_file(tmp_path):
    """Records are read in place from a private map: every array starts on an ALIGN
    boundary, and changing a taken tensor leaves the stored bytes as they were."""
    needs = needs_of(TR, SQ, TR)
    store = filled_store(tmp_path, needs)
    before = (store.dir / "material.bin").read_bytes()
    taken = [store.take(needs.at(i), explicit=True)[1] for i in range(3)]
    for arrays in taken:
        for t in arrays.values():
            assert t.data_ptr() % ALIGN == 0
    assert taken[1]["c"].tolist() == [1000] * 4 and taken[2]["mid"].tolist() == [2001] * 4
    taken[1]["c"].add_(5)
    assert taken[1]["c"].tolist() == [1005] * 4
    assert (store.dir / "material.bin").read_bytes() == before
    store.burn()
    assert taken[2]["msb"].tolist() == [2000] * 4     # still readable after the files go
