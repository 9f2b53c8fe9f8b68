"""Frame codec: tensors to typed protobuf frames and back, with every field checked.

A tensor becomes one or more ``Frame`` messages (chunks of at most ``max_chunk`` body
bytes). The receiver reassembles them with ``Reassembler``, which rejects anything
malformed with a ``FrameError`` naming the problem: unknown dtype, negative or oversized
shape, body length that does not match the shape, chunks out of order, a step number that
is not the next one, a frame of another session. Never pickle.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from protocols.wire import pinfer_pb2 as pb

DTYPES: dict[str, np.dtype] = {
    "int64": np.dtype("<i8"),
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "uint8": np.dtype("u1"),
}
TORCH_NAMES = {torch.int64: "int64", torch.float64: "float64", torch.float32: "float32",
               torch.uint8: "uint8"}

DEFAULT_MAX_CHUNK = 2 * 1024 * 1024     # body bytes per frame, well under gRPC's 4 MiB
MAX_TENSOR_BYTES = 4 * 1024 ** 3        # a single tensor larger than this is refused
MAX_DIMS = 8


class FrameError(ValueError):
    """A frame that is malformed or not the one the protocol expects."""


def dtype_name(tensor: torch.Tensor) -> str:
    name = TORCH_NAMES.get(tensor.dtype)
    if name is None:
        raise FrameError(f"cannot send dtype {tensor.dtype}; supported: {sorted(DTYPES)}")
    return name


def frame_crc(frame: pb.Frame) -> int:
    """CRC-32 of every field but ``crc``: what an integrity-checked link (no TLS) adds."""
    head = (f"{frame.session_id}|{frame.seq}|{frame.epoch}|{frame.round}|{frame.tag}|"
            f"{frame.dtype}|{list(frame.shape)}|{frame.chunk}|{frame.chunks}|{frame.error}")
    return zlib.crc32(frame.body, zlib.crc32(head.encode()))


def encode(tag: str, tensor: torch.Tensor, *, session_id: str, seq: int, epoch: int,
           round_no: int, max_chunk: int = DEFAULT_MAX_CHUNK,
           integrity: bool = False) -> list[pb.Frame]:
    """Split one tensor into frames (at least one, even when empty); ``integrity``: each
    frame carries its CRC-32 (for links without TLS, which would otherwise deliver a
    flipped bit as a wrong value)."""
    name = dtype_name(tensor)
    if tensor.dim() > MAX_DIMS:
        raise FrameError(f"tensor for {tag!r} has {tensor.dim()} dims; at most {MAX_DIMS}")
    array = tensor.detach().contiguous().cpu().numpy()
    body = array.astype(DTYPES[name], copy=False).tobytes()
    chunks = max(1, math.ceil(len(body) / max_chunk))
    frames = []
    for i in range(chunks):
        frames.append(pb.Frame(
            session_id=session_id, seq=seq + i, epoch=epoch, round=round_no, tag=tag,
            dtype=name, shape=list(array.shape), body=body[i * max_chunk:(i + 1) * max_chunk],
            chunk=i, chunks=chunks))
        if integrity:
            frames[-1].crc = frame_crc(frames[-1])
    return frames


def error_frame(message: str, *, session_id: str, seq: int, integrity: bool = False) -> pb.Frame:
    frame = pb.Frame(session_id=session_id, seq=seq, error=message[:2000] or "aborted")
    if integrity:
        frame.crc = frame_crc(frame)
    return frame


class Reassembler:
    """Receiver side: checks each frame and joins chunks into a tensor.

    ``feed(frame)`` returns ``None`` while a tensor is incomplete and the finished
    ``(tag, tensor, epoch, round, payload_bytes, frame_bytes)`` on its last chunk.
    """

    def __init__(self, session_id: str, max_tensor_bytes: int = MAX_TENSOR_BYTES,
                 integrity: bool = False):
        self.session_id = session_id
        self.integrity = integrity
        self.max_tensor_bytes = max_tensor_bytes
        self.next_seq = 1
        self._parts: list[bytes] = []
        self._head: pb.Frame | None = None
        self._frame_bytes = 0
        self._received = 0

    def feed(self, frame: pb.Frame):
        if self.integrity and frame.crc != frame_crc(frame):
            raise FrameError(f"frame step {frame.seq} ({frame.tag!r}) fails its checksum: "
                             "corrupted in transit")
        if frame.session_id != self.session_id:
            raise FrameError(
                f"frame of session {frame.session_id!r} on session {self.session_id!r}")
        if frame.seq != self.next_seq:
            raise FrameError(f"frame step {frame.seq} where step {self.next_seq} was due "
                             "(replayed, duplicated or lost frame)")
        self.next_seq += 1
        head = self._head
        if head is None:
            self._check_head(frame)
            self._head, self._parts, self._frame_bytes, self._received = frame, [], 0, 0
            head = frame
        elif (frame.tag, frame.dtype, list(frame.shape), frame.chunks, frame.epoch,
              frame.round) != (head.tag, head.dtype, list(head.shape), head.chunks,
                               head.epoch, head.round):
            raise FrameError(f"chunk {frame.chunk} of {head.tag!r} has a different header")
        if frame.chunk != len(self._parts):
            raise FrameError(f"chunk {frame.chunk} of {head.tag!r} where chunk "
                             f"{len(self._parts)} was due")
        self._parts.append(frame.body)
        self._received += len(frame.body)
        declared = math.prod(head.shape) * DTYPES[head.dtype].itemsize
        if self._received > declared:
            raise FrameError(f"frame {head.tag!r}: chunks carry more than the {declared} "
                             "bytes its shape declares")
        self._frame_bytes += frame.ByteSize()
        if len(self._parts) < head.chunks:
            return None
        body = b"".join(self._parts)
        self._head, self._parts = None, []
        dtype = DTYPES[head.dtype]
        shape = tuple(head.shape)
        expected = math.prod(shape) * dtype.itemsize
        if len(body) != expected:
            raise FrameError(f"frame {head.tag!r}: body has {len(body)} bytes, shape "
                             f"{list(shape)} of {head.dtype} needs {expected}")
        array = np.frombuffer(body, dtype=dtype).reshape(shape)
        tensor = torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
        return head.tag, tensor, head.epoch, head.round, len(body), self._frame_bytes

    def _check_head(self, frame: pb.Frame) -> None:
        if frame.dtype not in DTYPES:
            raise FrameError(f"frame {frame.tag!r}: unknown dtype {frame.dtype!r}; "
                             f"supported: {sorted(DTYPES)}")
        if len(frame.shape) > MAX_DIMS:
            raise FrameError(f"frame {frame.tag!r}: {len(frame.shape)} dims, at most {MAX_DIMS}")
        if any(d < 0 for d in frame.shape):
            raise FrameError(f"frame {frame.tag!r}: negative dimension in {list(frame.shape)}")
        # nonzero dims only: a zero dim must not hide huge others from the limit
        size = math.prod(d for d in frame.shape if d) * DTYPES[frame.dtype].itemsize
        if size > self.max_tensor_bytes:
            raise FrameError(f"frame {frame.tag!r}: tensor of {size} bytes exceeds the "
                             f"limit of {self.max_tensor_bytes}")
        if frame.chunks < 1 or frame.chunk != 0:
            raise FrameError(f"frame {frame.tag!r}: chunk {frame.chunk} of {frame.chunks} "
                             "does not start a tensor")
        declared = math.prod(frame.shape) * DTYPES[frame.dtype].itemsize
        if frame.chunks > max(1, declared):
            raise FrameError(f"frame {frame.tag!r}: {frame.chunks} chunks for a tensor of "
                             f"{declared} bytes")
