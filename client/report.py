"""The metrics table the client prints after a run."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


POLICY_WORDS = {"label": "only the one-hot of the argmax was revealed",
                "topk": "only the indices of the top k were revealed, not the scores",
                "full": "the full output was revealed",
                "tokens": "only the generated tokens were revealed"}


def metrics_table(rec: dict) -> str:
    rows = [("phase", "seconds", "sent", "received", "rounds")]
    for phase in ("offline", "online"):
        p = rec[phase]
        rows.append((phase, f"{p['seconds']:.4f}", human_bytes(p["bytes_sent"]),
                     human_bytes(p["bytes_received"]), f"{p['rounds']:g}"))
    width = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    lines.append(f"total bytes per inference (all parties, dealer included): "
                 f"{human_bytes(rec['total_bytes'])}")
    lines.append(f"peak client storage: {human_bytes(rec['client_storage_bytes'])} "
                 f"({rec['inferences_per_session']} inference(s) in this session)")
    if "plaintext_seconds" in rec:
        lines.append(f"plaintext forward (same CPU): {rec['plaintext_seconds']:.6f} s")
    fid = rec.get("fidelity")
    if fid and "cosine" in fid:
        lines.append(f"max |error| vs plaintext: {fid['max_abs_error']:.3g}   "
                     f"cosine: {fid['cosine']:.6f}")
    elif fid and "plaintext_tokens" in fid:
        lines.append(f"tokens agreeing with plaintext greedy: {fid['top1_agree']:.0%}")
    elif fid and str(rec.get("output_policy", "full")).startswith(("label", "topk")):
        lines.append(f"revealed {rec['output_policy']} agrees with plaintext: "
                     f"{fid['max_abs_error'] == 0}")
    elif fid:
        lines.append(f"max |error| vs plaintext: {fid['max_abs_error']:.3g}   "
                     f"top-1 agrees: {fid['top1_agree_all']}")
    if rec.get("output_policy"):
        lines.append(f"output policy: {rec['output_policy']} "
                     f"({POLICY_WORDS.get(rec['output_policy'].split(':')[0], '')})")
    return "\n".join(lines)
