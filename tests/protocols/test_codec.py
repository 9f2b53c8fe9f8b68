"""Frame codec: round trips, chunking, every refusal, and a fuzz of hostile frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.wire import codec
from protocols.wire import pinfer_pb2 as pb
from protocols.wire.codec import FrameError, Reassembler

SID = "sess-1"
TORCH_DTYPES = [torch.int64, torch.float64, torch.float32, torch.uint8]
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (2, 3), (2, 1, 3, 1, 2, 1, 1, 2)]  # last: MAX_DIMS


def sample(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int64:
        t = torch.randint(-2 ** 63, 2 ** 63 - 1, shape, generator=g, dtype=torch.int64)
        if t.numel() >= 2:
            t.view(-1)[0], t.view(-1)[1] = -2 ** 63, 2 ** 63 - 1
        return t
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 1e3).to(dtype)


def wire(frames):
    """Serialise and parse, as both transports do."""
    out = []
    for f in frames:
        g = pb.Frame()
        g.ParseFromString(f.SerializeToString())
        out.append(g)
    return out


def feed_all(reasm: Reassembler, frames):
    results = [reasm.feed(f) for f in frames]
    assert all(r is None for r in results[:-1])
    return results[-1]


def one_frame(**kw) -> pb.Frame:
    base = dict(session_id=SID, seq=1, epoch=0, round=1, tag="t", dtype="int64", shape=[2],
                body=b"\0" * 16, chunk=0, chunks=1)
    base.update(kw)
    return pb.Frame(**base)


# -- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(dtype, shape):
    x = sample(dtype, shape)
    frames = wire(codec.encode("fc1.open", x, session_id=SID, seq=1, epoch=3, round_no=2))
    assert len(frames) == 1
    tag, y, epoch, round_no, payload, size = feed_all(Reassembler(SID), frames)
    assert (tag, epoch, round_no) == ("fc1.open", 3, 2)
    assert y.dtype == dtype and tuple(y.shape) == tuple(shape)
    assert payload == x.numel() * x.element_size()
    assert size == sum(f.ByteSize() for f in frames) and size > payload
    # bit-exact (NaN-safe): compare the raw bytes
    assert y.contiguous().numpy().tobytes() == x.contiguous().numpy().tobytes()
    y.add_(0)  # the received tensor is writable, not a view of the frame's buffer


def test_non_contiguous_and_grad_tensors_round_trip():
    x = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()
    w = torch.ones(3, dtype=torch.float32, requires_grad=True) * 2
    r = Reassembler(SID)
    _, y, *_ = feed_all(r, codec.encode("a", x, session_id=SID, seq=1, epoch=0, round_no=1))
    _, v, *_ = feed_all(r, codec.encode("b", w, session_id=SID, seq=2, epoch=0, round_no=1))
    assert torch.equal(y, x) and torch.equal(v, w.detach())


def test_body_is_little_endian():
    x = torch.tensor([1, 256], dtype=torch.int64)
    (frame,) = codec.encode("t", x, session_id=SID, seq=1, epoch=0, round_no=1)
    assert frame.body == (1).to_bytes(8, "little") + (256).to_bytes(8, "little")
    assert frame.dtype == "int64" and list(frame.shape) == [2]


@pytest.mark.parametrize("max_chunk", [1, 7, 8, 800, 801])
def test_chunking_reassembles(max_chunk):
    x = sample(torch.float64, (10, 10), seed=5)      # 800 body bytes
    frames = codec.encode("big", x, session_id=SID, seq=4, epoch=1, round_no=9,
                          max_chunk=max_chunk)
    assert len(frames) == math.ceil(800 / max_chunk)
    assert [f.seq for f in frames] == list(range(4, 4 + len(frames)))
    assert [f.chunk for f in frames] == list(range(len(frames)))
    assert all(f.chunks == len(frames) and len(f.body) <= max_chunk for f in frames)
    r = Reassembler(SID)
    r.next_seq = 4
    tag, y, epoch, round_no, payload, size = feed_all(r, wire(frames))
    assert (tag, epoch, round_no, payload) == ("big", 1, 9, 800)
    assert size == sum(f.ByteSize() for f in frames)
    assert torch.equal(y, x)
    assert r.next_seq == 4 + len(frames)


def test_a_stream_of_tensors_keeps_step_numbers():
    r = Reassembler(SID)
    seq = 1
    for i, dtype in enumerate(TORCH_DTYPES * 2):
        x = sample(dtype, (3, 5), seed=i)
        frames = codec.encode(f"m{i}", x, session_id=SID, seq=seq, epoch=0, round_no=i + 1,
                              max_chunk=16)
        seq += len(frames)
        tag, y, *_ = feed_all(r, wire(frames))
        assert tag == f"m{i}" and torch.equal(y, x)


def test_empty_tensor_is_one_frame_with_empty_body():
    frames = codec.encode("e", torch.zeros(0, 5, dtype=torch.int64), session_id=SID, seq=1,
                          epoch=0, round_no=1, max_chunk=4)
    assert len(frames) == 1 and frames[0].body == b"" and frames[0].chunks == 1


# -- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float16, torch.complex64])
def test_encode_refuses_unsupported_dtypes(dtype):
    with pytest.raises(FrameError, match="cannot send dtype"):
        codec.encode("t", torch.zeros(2, dtype=dtype), session_id=SID, seq=1, epoch=0,
                     round_no=1)


def test_encode_refuses_too_many_dims():
    with pytest.raises(FrameError, match="9 dims; at most 8"):
        codec.encode("t", torch.zeros([1] * 9), session_id=SID, seq=1, epoch=0, round_no=1)


@pytest.mark.parametrize("dtype", ["int32", "bfloat16", "", "INT64", "object"])
def test_unknown_dtype(dtype):
    with pytest.raises(FrameError, match="unknown dtype") as e:
        Reassembler(SID).feed(one_frame(dtype=dtype))
    assert repr(dtype) in str(e.value)


def test_negative_dimension():
    with pytest.raises(FrameError, match=r"negative dimension in \[2, -1\]"):
        Reassembler(SID).feed(one_frame(shape=[2, -1], body=b""))


def test_too_many_dims():
    with pytest.raises(FrameError, match="9 dims, at most 8"):
        Reassembler(SID).feed(one_frame(shape=[1] * 9, body=b"\0" * 8))


@pytest.mark.parametrize("body_len", [0, 15])
def test_body_length_mismatch(body_len):
    with pytest.raises(FrameError, match=rf"\b{body_len}\b.* bytes.*\b16\b"):
        Reassembler(SID).feed(one_frame(body=b"\1" * body_len))


@pytest.mark.parametrize("body_len", [17, 32])
def test_body_longer_than_declared(body_len):
    with pytest.raises(FrameError, match=r"more than the 16 bytes"):
        Reassembler(SID).feed(one_frame(body=b"\1" * body_len))


def test_body_length_mismatch_after_chunks():
    frames = codec.encode("t", torch.zeros(4, dtype=torch.int64), session_id=SID, seq=1,
                          epoch=0, round_no=1, max_chunk=8)
    frames[-1].body = frames[-1].body[:-1]
    r = Reassembler(SID)
    for f in frames[:-1]:
        assert r.feed(f) is None
    with pytest.raises(FrameError, match="body has 31 bytes"):
        r.feed(frames[-1])


def _chunked(n: int = 3):
    return codec.encode("x", torch.zeros(n, dtype=torch.int64), session_id=SID, seq=1,
                        epoch=0, round_no=1, max_chunk=8)


def test_chunk_out_of_order():
    f0, _, f2 = _chunked()
    f2.seq = 2                               # step number fine, chunk index skips one
    r = Reassembler(SID)
    r.feed(f0)
    with pytest.raises(FrameError, match="chunk 2 of 'x' where chunk 1 was due"):
        r.feed(f2)


@pytest.mark.parametrize("chunk,chunks", [(1, 3), (0, 0), (5, 1)])
def test_first_frame_must_start_a_tensor(chunk, chunks):
    with pytest.raises(FrameError, match="does not start a tensor"):
        Reassembler(SID).feed(one_frame(chunk=chunk, chunks=chunks))


def test_replayed_frame_is_refused():
    r = Reassembler(SID)
    f = one_frame()
    r.feed(f)
    with pytest.raises(FrameError, match="step 1 where step 2 was due"):
        r.feed(f)


def test_duplicated_chunk_is_refused():
    f0, f1, _ = _chunked()
    r = Reassembler(SID)
    r.feed(f0)
    r.feed(f1)
    with pytest.raises(FrameError, match="step 2 where step 3 was due"):
        r.feed(f1)


@pytest.mark.parametrize("seq", [0, 2, 7, 2 ** 64 - 1])
def test_wrong_step_number(seq):
    with pytest.raises(FrameError, match=f"step {seq} where step 1 was due"):
        Reassembler(SID).feed(one_frame(seq=seq))


def test_other_session():
    with pytest.raises(FrameError, match="session 'intruder' on session 'sess-1'"):
        Reassembler(SID).feed(one_frame(session_id="intruder"))


def test_oversized_tensor():
    r = Reassembler(SID, max_tensor_bytes=64)
    r.feed(one_frame(shape=[8], body=b"\0" * 64))               # exactly the limit is fine
    with pytest.raises(FrameError, match="72 bytes exceeds the limit of 64"):
        r.feed(one_frame(seq=2, shape=[9], body=b""))          # refused from the header alone


def test_default_limit_refuses_huge_shapes_from_the_header():
    with pytest.raises(FrameError, match="exceeds the limit"):
        Reassembler(SID).feed(one_frame(shape=[2 ** 31, 2 ** 31], body=b""))


@pytest.mark.parametrize("field,value", [("tag", "y"), ("dtype", "float64"),
                                         ("shape", [4]), ("chunks", 4), ("epoch", 1),
                                         ("round", 2)])
def test_header_change_between_chunks(field, value):
    f0, f1, _ = _chunked()
    if field == "shape":
        del f1.shape[:]
        f1.shape.extend(value)
    else:
        setattr(f1, field, value)
    r = Reassembler(SID)
    r.feed(f0)
    with pytest.raises(FrameError, match="chunk 1 of 'x' has a different header"):
        r.feed(f1)


def test_error_frame_carries_the_message():
    f = codec.error_frame("out of material", session_id=SID, seq=5)
    assert f.error == "out of material" and f.seq == 5 and f.session_id == SID
    assert codec.error_frame("", session_id=SID, seq=1).error == "aborted"
    assert len(codec.error_frame("x" * 5000, session_id=SID, seq=1).error) == 2000


# -- product bugs ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [[0, 2 ** 62, 2 ** 62], [0, 2 ** 63 - 1],
                                   [0, 2 ** 21, 2 ** 21, 2 ** 21]])
def test_zero_size_tensor_with_huge_dims_is_a_frame_error(shape):
    with pytest.raises(FrameError):
        Reassembler(SID).feed(one_frame(shape=shape, body=b""))


def test_chunks_beyond_the_declared_size_are_refused_early():
    r = Reassembler(SID, max_tensor_bytes=1024)
    with pytest.raises(FrameError):
        for i in range(10):   # 10 x 1000 bytes for a tensor of 8 bytes, limit 1024
            r.feed(one_frame(seq=i + 1, shape=[1], chunk=i, chunks=2 ** 32 - 1,
                             body=b"\0" * 1000))


# -- fuzz -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
U32 = st.integers(0, 2 ** 32 - 1)
DIM = st.one_of(st.integers(0, 6), st.integers(-2, 6),
                st.sampled_from([2 ** 31, 2 ** 32 + 1, 2 ** 62, 2 ** 63 - 1, -(2 ** 63)]),
                st.integers(-(2 ** 63), 2 ** 63 - 1))


frames_st = st.builds(
    pb.Frame,
    session_id=st.sampled_from([SID, SID, SID, "", "other"]),
    seq=st.one_of(st.integers(0, 8), st.integers(0, 2 ** 64 - 1)),
    epoch=U32, round=U32,
    tag=st.text(max_size=8),
    dtype=st.sampled_from(sorted(codec.DTYPES) * 3 + ["", "int32", "float16", "\x00"]),
    shape=st.lists(DIM, max_size=10),
    body=st.binary(max_size=80),
    chunk=st.one_of(st.integers(0, 4), U32),
    chunks=st.one_of(st.integers(0, 4), U32),
    error=st.sampled_from(["", "", "boom"]),
)


def _check_result(result):
    if result is None:
        return
    tag, tensor, _, _, payload, size = result
    assert isinstance(tensor, torch.Tensor)
    assert payload == tensor.numel() * tensor.element_size() and size >= payload


@FUZZ
@given(st.lists(st.tuples(frames_st, st.booleans(), st.booleans(), st.booleans(),
                          st.booleans()), min_size=1, max_size=6))
def test_fuzz_random_frames_raise_only_frame_error(items):
    r = Reassembler(SID, max_tensor_bytes=1 << 20)
    for f, right_session, right_seq, right_chunk, fit_body in items:
        # half the time make the frame pass each cheap check, so the fuzz reaches the rest
        if right_session:
            f.session_id = SID
        if right_seq:
            f.seq = r.next_seq
        if right_chunk:
            head = r._head
            if head is None:
                f.chunk, f.chunks = 0, 1 + f.chunks % 3
            else:
                f.chunk = len(r._parts)
                for name in ("tag", "dtype", "chunks", "epoch", "round"):
                    setattr(f, name, getattr(head, name))
                del f.shape[:]
                f.shape.extend(head.shape)
        if fit_body and f.dtype in codec.DTYPES and all(0 <= d <= 64 for d in f.shape):
            n = math.prod(f.shape) * codec.DTYPES[f.dtype].itemsize
            if n <= 4096:
                f.body = (f.body * (n // max(1, len(f.body)) + 1))[:n] if f.body else b"\1" * n
        try:
            _check_result(r.feed(wire([f])[0]))
        except FrameError:
            return


MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["session_id", "tag", "dtype"]),
              st.sampled_from(["", SID, "x", "int64", "uint8", "float32", "bad"])),
    st.tuples(st.just("set"), st.sampled_from(["seq", "epoch", "round", "chunk", "chunks"]),
              st.one_of(st.integers(0, 6), U32)),
    st.tuples(st.just("shape"), st.lists(DIM, max_size=9)),
    st.tuples(st.just("truncate"), st.integers(0, 64)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("drop")), st.tuples(st.just("dup")), st.tuples(st.just("swap")),
)


@FUZZ
@given(dtype=st.sampled_from(TORCH_DTYPES),
       shape=st.lists(st.integers(0, 4), max_size=3),
       max_chunk=st.integers(1, 24),
       mutations=st.lists(st.tuples(st.integers(0, 40), MUTATIONS), max_size=3),
       data=st.data())
def test_fuzz_mutated_valid_frames_raise_only_frame_error(dtype, shape, max_chunk, mutations,
                                                          data):
    x = sample(dtype, tuple(shape), seed=len(shape))
    frames = codec.encode("m", x, session_id=SID, seq=1, epoch=0, round_no=1,
                          max_chunk=max_chunk)
    frames += codec.encode("n", x, session_id=SID, seq=1 + len(frames), epoch=0, round_no=2,
                           max_chunk=max_chunk)
    for pos, mut in mutations:
        i = pos % len(frames)
        f = frames[i]
        kind = mut[0]
        if kind == "set":
            setattr(f, mut[1], mut[2])
        elif kind == "shape":
            del f.shape[:]
            f.shape.extend(mut[1])
        elif kind == "truncate":
            f.body = f.body[:mut[1]]
        elif kind == "extend":
            f.body = f.body + mut[1]
        elif kind == "drop" and len(frames) > 1:
            frames.pop(i)
        elif kind == "dup":
            frames.insert(i, pb.Frame.FromString(f.SerializeToString()))
        elif kind == "swap":
            j = data.draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
    r = Reassembler(SID, max_tensor_bytes=1 << 20)
    got = []
    try:
        for f in wire(frames):
            result = r.feed(f)
            _check_result(result)
            if result is not None:
                got.append(result)
    except FrameError:
        return
    if not mutations:
        assert [g[0] for g in got] == ["m", "n"]
        assert all(np.array_equal(g[1].numpy(), x.numpy(), equal_nan=x.is_floating_point())
                   for g in got)


def test_integrity_checked_frames_refuse_any_flipped_bit():
    """Links without TLS carry a CRC-32 per frame: a bit flipped anywhere in the body or the
    header is refused by name instead of delivered as a wrong value."""
    t = torch.arange(64, dtype=torch.int64)
    frames = codec.encode("x", t, session_id="s", seq=1, epoch=1, round_no=1, integrity=True)
    got = codec.Reassembler("s", integrity=True).feed(frames[0])
    assert torch.equal(got[1], t)
    raw = frames[0].SerializeToString()
    for pos in range(0, len(raw), 7):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        frame = pb.Frame()
        try:
            frame.ParseFromString(bytes(bad))
        except Exception:  # noqa: BLE001 - undecodable: refused before the codec
            continue
        with pytest.raises(codec.FrameError):
            codec.Reassembler("s", integrity=True).feed(frame)
    plain = codec.encode("x", t, session_id="s", seq=1, epoch=1, round_no=1)[0]
    with pytest.raises(codec.FrameError, match="checksum"):
        codec.Reassembler("s", integrity=True).feed(plain)   # a frame without its CRC
