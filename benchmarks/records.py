"""JSON Lines benchmark records (schema: ARCHITECTURE.md, "Benchmark records")."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

_ROOT = Path(__file__).resolve().parent.parent


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(name) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """Where a record was measured: CPU, cores, memory, platform, Python, torch (and GPU)."""
    kib = (_proc_field("/proc/meminfo", "MemTotal") or "").split()
    info: dict[str, Any] = {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(kib[0]) / 2**20, 1) if kib and kib[0].isdigit() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    from mpc import native_dcf
    info["dcf_kernel"] = native_dcf.status()      # "native" (AES-NI) or "numpy (why)"
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or CUDA probing failed: still describe the machine
        info.setdefault("torch", None)
    return info


def git_commit() -> str:
    """Short hash of HEAD, with "-dirty" when the tree has changes; "unknown" on any failure."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return (commit + ("-dirty" if git("status", "--porcelain") else "")) if commit else "unknown"
    except Exception:  # no git, not a checkout, timeout
        return "unknown"


def package_version() -> str:
    try:
        return importlib.metadata.version("pinfer")
    except Exception:  # PackageNotFoundError or a broken install
        return "0.0.0+local"


def base_record(bench: str, **fields: Any) -> dict:
    """A record with bench, machine, git, version and timestamp filled; `fields` added (and win)."""
    record: dict[str, Any] = {
        "bench": bench,
        "machine": machine_info(),
        "git": git_commit(),
        "version": package_version(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(fields)
    return record


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append one JSON object per line to `path`, creating parent folders."""
    lines = [json.dumps(r, default=str) + "\n" for r in records]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(lines)


def read_records(path: str | os.PathLike, bench: str | None = None) -> list[dict]:
    """All records in `path` (blank lines skipped); only those of `bench` when given."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if bench is None or r.get("bench") == bench]


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` timed calls after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, 3 significant digits)."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 999.5 or unit == "TiB":     # 1000-1023 would print as "1e+03"
            break
    return f"{n:.3g} {unit}"


def _lookup(row: dict, key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any, key: str) -> str:
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, (int, float)) and "bytes" in key.rsplit(".", 1)[-1]:
        return human_bytes(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, key) for v in value) + "]"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table; columns are (header, key) pairs, keys may be dotted ("online.seconds")."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(_lookup(row, k), k) for _, k in columns) + " |")
    return "\n".join(lines)


SESSION_FIELDS = {"bench": str, "model": str, "protocol": str, "method": str, "params": dict,
                  "offline": dict, "online": dict, "parties": dict, "total_bytes": (int, float),
                  "frame_bytes": (int, float), "client_storage_bytes": (int, float),
                  "inferences_per_session": int, "plaintext_seconds": float, "fidelity": dict,
                  "dealer": str, "threads": int, "net": str, "config_digest": str,
                  "machine": dict, "git": str, "version": str}
PHASE_FIELDS = ("seconds", "bytes_sent", "bytes_received", "rounds")
NETS = ("loopback", "proxy-lan", "proxy-wan", "model-lan", "model-wan")
DEALERS = ("separate-process", "in-process-test", "tfp-party0", "none")


def validate_session_record(r: dict) -> None:
    """A session record against ARCHITECTURE.md's schema; raises ValueError naming the
    first missing or ill-typed field."""
    for name, kind in SESSION_FIELDS.items():
        if name not in r:
            raise ValueError(f"record lacks {name!r}")
        if not isinstance(r[name], kind) or isinstance(r[name], bool) and kind is int:
            raise ValueError(f"record field {name!r} is {type(r[name]).__name__}")
    for phase in ("offline", "online"):
        for f in PHASE_FIELDS:
            if not isinstance(r[phase].get(f), (int, float)):
                raise ValueError(f"record field {phase}.{f} missing or not a number")
    for party in ("client", "server"):
        if party not in r["parties"]:
            raise ValueError(f"record lacks parties.{party}")
    if r["net"] not in NETS:
        raise ValueError(f"record net {r['net']!r} is not one of {NETS}")
    if r["dealer"] not in DEALERS:
        raise ValueError(f"record dealer {r['dealer']!r} is not one of {DEALERS}")
    if r["net"].startswith("proxy") and not r.get("wire_bytes"):
        raise ValueError("a proxy run must carry wire_bytes")
