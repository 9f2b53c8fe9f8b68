"""Preprocessing store: one party's correlated randomness for one session, on disk.

Layout: ``<root>/<session>-<party>/`` (mode 0700) holding ``header.json`` (family, ring,
fixed-point bits, session, party, needs digest), ``seed.bin`` (this party's PRG seed),
``material.bin`` (explicit material records, streamed in as the dealer sends them, read
back one at a time through a private memory map: each array starts at a 64-byte aligned
offset, so a record's arrays are used in place, without a copy) and ``const-*.bin`` (constant-operand material). Every file is created
owner-only (0600). A store is made under a hidden temporary name and renamed into place
once its header is written and locked (``flock``), so a half-made store is never mistaken
for a live one.

Rules (ARCHITECTURE.md, contract 5):
* material is consumed strictly once and in the planned order; ``take`` checks the kind,
  scope and shapes the caller expects against the plan and raises ``MaterialError`` on
  any difference, on exhaustion, and on a record that is not the next one;
* nothing is ever regenerated: a missing item raises;
* constant-operand material (a weight's mask, the masked weight W - B) may be read many
  times, but ``mark_opened`` refuses a second opening under the same key;
* ``burn`` deletes everything; a failed session burns its store.

Housekeeping of the root (``protocols.store_root``: its quota and TTL, ``--store-quota``
and ``--store-ttl`` on the CLIs):
* quota: a write that would take the bytes under the root past the quota raises
  ``QuotaError`` naming the quota and the requested size, and burns the writing store;
* a store holds an ``flock`` on its header while its owner lives; ``sweep`` deletes the
  stores of dead owners (killed before they could burn) and those older than the TTL. It
  runs when a process starts (CLIs) and whenever a store is made. A live store past its
  TTL burns itself and refuses use.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import secrets
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import torch

from protocols.needs import Need, Needs
from protocols.store_root import TMP_PREFIX, policy, recount, release, reserve, sweep

_LEN = struct.Struct("<I")
_DTYPES = {torch.int64: "<i8", torch.uint8: "|u1"}
_NUMPY = {"<i8": np.int64, "|u1": np.uint8}
MAX_RECORD_HEADER = 1 << 20
ALIGN = 64                # every stored array starts at a multiple of this file offset


class MaterialError(RuntimeError):
    """Preprocessing material missing, exhausted, mismatched or reused."""


class QuotaError(MaterialError):
    """Writing material would exceed the store root's size quota."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class MaterialStore:
    """Material of one party for one session (possibly a pool of several inferences)."""

    def __init__(self, root: str | Path, *, party: str, session_id: str, family: str,
                 frac_bits: int, needs: Needs):
        if not session_id or any(c in session_id for c in "/\\.") or len(session_id) > 64:
            raise MaterialError(f"bad session id {session_id!r}")
        self.party = party
        self.needs = needs
        self.header = {"family": family, "ring": "Z_2^64", "frac_bits": frac_bits,
                       "session": session_id, "party": party, "needs": needs.digest(),
                       "items": len(needs)}
        self.root = root = Path(root)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.policy = policy(root)
        self.dir = root / f"{session_id}-{party}"
        if self.dir.exists():
            raise MaterialError(f"store for session {session_id} ({party}) already exists")
        sweep(root)
        recount(root)
        self._writer = None
        self._wpos = 0            # bytes in material.bin
        self._map = None          # read-only view of material.bin (copy-on-write)
        self._rpos = 0
        self._lock_fd = None
        self.written = 0          # explicit records written
        self.cursor = 0           # items consumed
        self._opened: set[str] = set()
        self._seed: bytes | None = None   # read once (it never changes once written)
        self._burned = False
        self._bytes = 0           # bytes this store accounted against the quota
        self.peak_bytes = 0
        self._t0 = time.monotonic()
        self._make()

    def _make(self) -> None:
        """Create the directory under a temporary name, lock it, rename it into place."""
        head = json.dumps(self.header).encode()
        final = self.dir
        self.dir = tmp = self.root / f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        os.chmod(tmp, 0o700)
        try:
            self._reserve(len(head))
            _write_private(tmp / "header.json", head)
            self._lock_fd = os.open(tmp / "header.json", os.O_RDONLY | os.O_NOFOLLOW)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            os.rename(tmp, final)
            self.dir = final
        except BaseException as exc:
            self.burn()
            if isinstance(exc, OSError):
                raise MaterialError(f"store for session {self.header['session']} "
                                    f"({self.party}) already exists or cannot be made: "
                                    f"{exc}") from None
            raise

    def _reserve(self, n: int) -> None:
        """Account ``n`` more bytes under the root; over the quota: burn and raise."""
        fitted, used, quota = reserve(self.root, n)
        if fitted:
            self._bytes += n
            return
        self.burn()
        raise QuotaError(f"{self.party}: store quota exceeded: writing {n} bytes of material "
                         f"for session {self.header['session']} would bring {self.root} to "
                         f"{used} bytes, over its quota of {quota} bytes (--store-quota); "
                         "the session's material was deleted")

    # -- writing (offline) -----------------------------------------------------------------
    def write_seed(self, seed: bytes) -> None:
        self._alive()
        self._reserve(len(seed))
        _write_private(self.dir / "seed.bin", seed)
        self._seed = None
        self._track_peak()

    @property
    def seed(self) -> bytes:
        self._alive()
        if self._seed is not None:
            return self._seed
        try:
            self._seed = (self.dir / "seed.bin").read_bytes()
            return self._seed
        except FileNotFoundError:
            raise MaterialError(f"{self.party}: no seed in the store (offline phase not run)") from None

    def append(self, index: int, kind: str, arrays: dict[str, torch.Tensor]) -> None:
        """Append one explicit record; records must arrive in plan order."""
        self._alive()
        if index < self.written:
            raise MaterialError(f"{self.party}: material record {index} arrived after "
                                f"record {self.written - 1}")
        need = self.needs.at(index) if index < len(self.needs) else None
        if need is None or need.kind != kind:
            raise MaterialError(f"{self.party}: record {index} of kind {kind!r} does not match "
                                f"the plan ({need.describe() if need else 'past the end'})")
        if self._writer is None:
            fd = os.open(self.dir / "material.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._writer = os.fdopen(fd, "ab")
            self._wpos = os.fstat(fd).st_size
        for name, v in arrays.items():
            if v.dtype not in _DTYPES:
                raise MaterialError(f"{self.party}: cannot store {name} of dtype {v.dtype}")
        meta = {"index": index, "kind": kind,
                "arrays": [[k, list(v.shape), _DTYPES[v.dtype]] for k, v in arrays.items()]}
        head = json.dumps(meta).encode()
        parts, pos = [_LEN.pack(len(head)) + head], self._wpos + _LEN.size + len(head)
        for v in arrays.values():
            pad = -pos % ALIGN
            data = np.ascontiguousarray(v.numpy(), dtype=_DTYPES[v.dtype])
            parts += [bytes(pad), memoryview(data).cast("B") if data.size else b""]
            pos += pad + data.nbytes
        self._reserve(pos - self._wpos)
        for part in parts:
            self._writer.write(part)
        self._wpos = pos
        self.written = index + 1

    def finish_writing(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._track_peak()

    # -- consuming (online) ----------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return len(self.needs) - self.cursor

    def take(self, expected: Need, explicit: bool) -> tuple[int, dict[str, torch.Tensor]]:
        """Consume the next item; ``expected`` is what the caller is about to compute."""
        self._alive()
        if self.cursor >= len(self.needs):
            raise MaterialError(f"{self.party}: preprocessing exhausted after {self.cursor} "
                                f"items while {expected.describe()} was asked for")
        planned = self.needs.at(self.cursor)
        if planned != expected:
            raise MaterialError(f"{self.party}: item {self.cursor} was planned as "
                                f"{planned.describe()} but {expected.describe()} was asked for")
        index = self.cursor
        self.cursor += 1
        arrays = self._read_record(index) if explicit else {}
        return index, arrays

    def _view(self, end: int, index: int):
        """The memory map, covering at least ``end`` bytes (remapped if the file grew)."""
        if self._map is None or end > len(self._map):
            if self._writer is not None:
                self.finish_writing()
            try:
                with open(self.dir / "material.bin", "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size >= end and size > 0:
                        # copy-on-write: arrays are writable; the file is never changed
                        self._map = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE,
                                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except FileNotFoundError:
                raise MaterialError(f"{self.party}: no explicit material stored") from None
            if self._map is None or end > len(self._map):
                raise MaterialError(f"{self.party}: material record {index} missing or "
                                    "truncated (store truncated)")
        return self._map

    def _read_record(self, index: int) -> dict[str, torch.Tensor]:
        pos = self._rpos
        view = self._view(pos + _LEN.size, index)
        (n,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        meta = None
        if n <= MAX_RECORD_HEADER:
            view = self._view(pos + n, index)
            try:
                meta = json.loads(view[pos:pos + n])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = None
            pos += n
        if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), list):
            raise MaterialError(f"{self.party}: corrupt material record header at item {index}")
        if meta.get("index") != index:
            raise MaterialError(f"{self.party}: record {meta.get('index')} where {index} was due")
        out = {}
        for entry in meta["arrays"]:
            name, shape, dtype = entry if len(entry) == 3 else (*entry, "<i8")
            if dtype not in _NUMPY:
                raise MaterialError(f"{self.party}: record {index} has unknown dtype {dtype!r}")
            np_dtype = np.dtype(dtype)
            count = int(np.prod(shape)) if shape else 1
            pos += -pos % ALIGN
            view = self._view(pos + np_dtype.itemsize * count, index)
            arr = np.frombuffer(view, np_dtype, count, offset=pos)
            pos += np_dtype.itemsize * count
            out[name] = torch.from_numpy(arr.astype(_NUMPY[dtype], copy=False)).reshape(shape)
        self._rpos = pos
        return out

    # -- constant-operand material ---------------------------------------------------------
    def put_constant(self, key: str, tensor: torch.Tensor) -> None:
        self._alive()
        path = self._const_path(key)
        arr = tensor.to(torch.int64).contiguous().numpy().astype("<i8")
        head = json.dumps({"key": key, "shape": list(arr.shape)}).encode()
        self._reserve(_LEN.size + len(head) + arr.nbytes)
        _write_private(path, _LEN.pack(len(head)) + head + arr.tobytes())
        self._track_peak()

    def constant(self, key: str) -> torch.Tensor:
        self._alive()
        try:
            data = self._const_path(key).read_bytes()
        except FileNotFoundError:
            raise MaterialError(f"{self.party}: no constant-operand material for {key!r}") from None
        (n,) = _LEN.unpack_from(data)
        meta = json.loads(data[4:4 + n])
        arr = np.frombuffer(data, "<i8", offset=4 + n).astype(np.int64)
        return torch.from_numpy(arr).reshape(meta["shape"])

    def mark_opened(self, key: str) -> None:
        """Record that value - B under ``key`` was opened; a second opening raises."""
        if key in self._opened:
            raise MaterialError(f"{self.party}: constant-operand mask {key!r} opened twice "
                                "(a rewritten tensor must take a new id)")
        self._opened.add(key)

    def _const_path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
        return self.dir / f"const-{safe}.bin"

    # -- housekeeping ----------------------------------------------------------------------
    def storage_bytes(self) -> int:
        if self._burned or not self.dir.exists():
            return 0
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())

    def _track_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.storage_bytes())

    def _alive(self) -> None:
        if self._burned:
            raise MaterialError(f"{self.party}: store of session {self.header['session']} was burned")
        if time.monotonic() - self._t0 > self.policy.ttl_s:
            self.burn()
            raise MaterialError(f"{self.party}: material of session {self.header['session']} "
                                f"expired after {self.policy.ttl_s:g} s (--store-ttl) and was "
                                "deleted")

    def burn(self) -> None:
        """Delete all material of this session (failed or finished)."""
        if self._writer is not None:
            self._writer.close()
        # the map is unmapped when the last array taken from it is dropped
        self._writer = self._map = self._seed = None
        if not self._burned:
            self._burned = True
            shutil.rmtree(self.dir, ignore_errors=True)
            release(self.root, self._bytes)
        if self._lock_fd is not None:
            os.close(self._lock_fd)       # releases the lock: nothing is left to sweep
            self._lock_fd = None
