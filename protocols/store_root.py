"""Housekeeping of a preprocessing store root: size quota, expiry and orphans.

Policy per root (``configure``; ``DEFAULT_QUOTA_BYTES`` and ``DEFAULT_TTL_S`` otherwise;
the CLIs' ``--store-quota`` / ``--store-ttl`` through ``add_store_args`` and ``open_root``):
* quota: ``reserve`` accounts the bytes a store is about to write against the root's
  quota; the count starts from the bytes on disk (``recount``, whenever a store is made)
  and follows this process's writes and burns (``release``);
* ``sweep`` deletes every store whose owner process is gone (the store's ``flock`` on its
  header is free: the process was killed before it could burn) and every store older
  than the TTL; half-made stores (``.tmp-*``) count as orphans after ``TMP_GRACE_S``.
Only store directories (with a ``header.json``, or ``.tmp-*``) are ever touched.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUOTA_BYTES = 16 << 30       # per store root
DEFAULT_TTL_S = 24 * 3600.0          # material older than this is deleted
TMP_GRACE_S = 60.0                   # a half-made store older than this is an orphan
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StorePolicy:
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    ttl_s: float = DEFAULT_TTL_S

    def __post_init__(self):
        if self.quota_bytes <= 0 or self.ttl_s <= 0:
            raise ValueError(f"store quota ({self.quota_bytes} bytes) and TTL ({self.ttl_s} s) "
                             "must be positive")


_policies: dict[str, StorePolicy] = {}
_usage: dict[str, int] = {}          # bytes under each root, as this process accounts them
_root_lock = threading.Lock()


def _key(root) -> str:
    return os.path.abspath(root)


def configure(root, *, quota_bytes: int | None = None, ttl_s: float | None = None) -> StorePolicy:
    """Set the quota and TTL of the stores under ``root`` in this process."""
    base = policy(root)
    pol = StorePolicy(base.quota_bytes if quota_bytes is None else int(quota_bytes),
                      base.ttl_s if ttl_s is None else float(ttl_s))
    with _root_lock:
        _policies[_key(root)] = pol
    return pol


def policy(root) -> StorePolicy:
    with _root_lock:
        return _policies.get(_key(root), StorePolicy())


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1048576"`` -> bytes (K, M, G, T are powers of 1024)."""
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = 1 << (10 * "KMGT".index(raw[-1]) + 10) if raw and raw[-1] in "KMGT" else 1
    number = raw[:-1] if scale > 1 else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"size {text!r}: expected a number of bytes, e.g. 500M or 2G") from None
    if not value > 0:
        raise ValueError(f"size {text!r} must be positive")
    return int(value * scale)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_store_args(parser) -> None:
    """``--store-quota`` and ``--store-ttl`` (server and client CLIs, beside ``--store``)."""
    parser.add_argument("--store-quota", type=_size_arg, metavar="SIZE",
                        help="most bytes of material under --store, e.g. 500M or 20G; a "
                             "session that would exceed it fails with a clear error "
                             f"(default {DEFAULT_QUOTA_BYTES >> 30}G)")
    parser.add_argument("--store-ttl", type=float, metavar="SECONDS",
                        help="material older than this is deleted (default "
                             f"{DEFAULT_TTL_S:g} s)")


def open_root(root, *, quota_bytes: int | None = None, ttl_s: float | None = None) -> list[str]:
    """At process start: set the root's policy, then sweep it (returns what was deleted)."""
    configure(root, quota_bytes=quota_bytes, ttl_s=ttl_s)
    return sweep(root)


def recount(root) -> None:
    """Start the root's count from the bytes on disk."""
    total = root_bytes(root)
    with _root_lock:
        _usage[_key(root)] = total


def reserve(root, n: int) -> tuple[bool, int, int]:
    """Account ``n`` more bytes under ``root`` if they fit: (fitted, bytes with them, quota)."""
    key, quota = _key(root), policy(root).quota_bytes
    with _root_lock:
        used = _usage.get(key, 0) + n
        if used <= quota:
            _usage[key] = used
        return used <= quota, used, quota


def release(root, n: int) -> None:
    key = _key(root)
    with _root_lock:
        _usage[key] = max(0, _usage.get(key, 0) - n)


def root_bytes(root) -> int:
    """Bytes of all files under ``root`` (0 if it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _owner_gone(header: Path) -> bool:
    """True if no process holds the store's lock (its owner burned it or died)."""
    try:
        fd = os.open(header, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def sweep(root, *, max_age_s: float | None = None) -> list[str]:
    """Delete the material under ``root`` of sessions whose owner process is gone and of
    sessions older than ``max_age_s`` (default: the root's TTL). Returns the names
    deleted. Only store directories (those with a header, or half-made ones) are touched."""
    root = Path(root)
    max_age = policy(root).ttl_s if max_age_s is None else max_age_s
    now = time.time()
    deleted = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return deleted
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        header = Path(entry.path) / "header.json"
        try:
            age = now - (header.stat().st_mtime if header.exists() else entry.stat().st_mtime)
        except FileNotFoundError:
            continue
        if entry.name.startswith(TMP_PREFIX):
            doomed = age > TMP_GRACE_S and _owner_gone(header)
        elif header.exists():
            doomed = age > max_age or _owner_gone(header)
        else:
            continue
        if doomed:
            shutil.rmtree(entry.path, ignore_errors=True)
            deleted.append(entry.name)
    return deleted
