"""Tables and plots from the records of ``python -m benchmarks run``.

    python -m benchmarks report results.jsonl [--out benchmarks/results]

Writes ``summary.md`` (one table per model and length bucket: every protocol on every
network, measured or modelled, said in each row) and PNG plots: online latency per
protocol and network, bytes per party, offline against online (stacked). The latest
record of each (model, bucket, network, protocol) wins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.records import human_bytes, read_records

RESULTS = Path(__file__).resolve().parent / "results"
NET_ORDER = ["loopback", "proxy-lan", "model-lan", "proxy-wan", "model-wan"]
KIND = {"loopback": "measured", "proxy-lan": "measured (wire proxy)",
        "proxy-wan": "measured (wire proxy)", "model-lan": "modelled", "model-wan": "modelled"}
EE_NOTE = ("`ee` is obfuscation with its own threat model, not cryptography: a host that knows "
           "the public base weights recovers its key (benchmarks/results/ee.md).")


def label(r) -> str:
    """The protocol and its non-default settings that change its arithmetic: ``crypten.*``
    for crypten, ``compare.*``, ``fixed.*`` and ``kv.*`` for mpc, he and hybrid; none
    for plaintext and ee; transport tuning never."""
    mine = {"crypten": ("crypten.",), "mpc": ("compare.", "fixed.", "kv."),
            "he": ("compare.", "fixed."), "hybrid": ("compare.", "fixed.")}
    extra = [s for s in r["params"].get("settings", [])
             if s.startswith(mine.get(r["protocol"], ()) or ("\0",))]
    return r["protocol"] + (f" [{', '.join(extra)}]" if extra else "")


def latest(records) -> dict:
    out = {}
    for r in records:
        out[(r["model"], r["params"].get("seq_len"), r["net"], label(r))] = r
    return out


def crypten_comparison(rows) -> list[str]:
    """Every mpc variant against crypten (pinned: tanh GeLU), same model, bucket and net."""
    lines = []
    for (model, seq, net, lab), c in sorted(rows.items(), key=lambda kv: str(kv[0])):
        if lab != "crypten" or net != "loopback":
            continue
        for (m2, s2, n2, lab2), r in sorted(rows.items(), key=lambda kv: str(kv[0])):
            if (m2, s2, n2) != (model, seq, net) or not lab2.startswith("mpc"):
                continue
            on_r, on_c = r["online"], c["online"]
            fid = lambda x: x["fidelity"].get("cosine", x["fidelity"].get("max_abs_error"))  # noqa: E731
            lines.append(
                f"| {model}{f' {seq}' if seq else ''} | {lab2} | {on_r['seconds']:.3g} / "
                f"{on_c['seconds']:.3g} = {on_c['seconds'] / on_r['seconds']:.2f}x | "
                f"{human_bytes(on_r['bytes_sent'])} / {human_bytes(on_c['bytes_sent'])} = "
                f"{on_c['bytes_sent'] / on_r['bytes_sent']:.2f}x | {on_r['rounds']:g} / "
                f"{on_c['rounds']:g} | {human_bytes(r['total_bytes'])} / "
                f"{human_bytes(c['total_bytes'])} | {r.get('inferences_per_session', 1)} / "
                f"{c.get('inferences_per_session', 1)} | {fid(r):.6f}{broken_sessions(r['fidelity'])} / "
                f"{fid(c):.6f}{broken_sessions(c['fidelity'])} |")
    if not lines:
        return []
    return ["## mpc against crypten (loopback, same run)", "",
            "Online seconds and online bytes sent per party (client), mpc / crypten and "
            "crypten's multiple; total bytes per inference over both phases and every party "
            "(dealer included). CrypTen under TFP moves no offline bytes: party 0 (the "
            "client) makes every triple itself, so its totals carry no dealer traffic and "
            "its online time includes making the triples, while it gives no security "
            "against the client; a dealer-backed CrypTen (TTP) sends about 28% more "
            "(REFERENCES.md). Fidelity: cosine to plaintext for embeddings, max |logit error| for digits.", "",
            "| model | mpc variant | online s (x) | online sent per party (x) | rounds | "
            "total bytes/inf | inferences per session | fidelity |", "|" + "---|" * 8,
            *lines, ""]


def _spread(r, phase) -> str:
    s = r[phase].get("spread")
    return f" ({s[0]:.3g}-{s[1]:.3g})" if s else ""


def broken_sessions(fid: dict) -> str:
    """' (worst of n; k broke)' where sessions were recorded one by one (cosine under 0.99
    or a top-1 miss counts as broken)."""
    each = fid.get("sessions")
    if not each:
        return ""
    bad = sum(1 for f in each if f.get("cosine", 1.0) < 0.99 or f.get("top1_agree") is False)
    return f" (worst of {len(each)}" + (f"; {bad} broke)" if bad else ")")


def _row(r) -> str:
    on, off, par = r["online"], r["offline"], r["parties"]
    server_on = par.get("server", {}).get("online", {}).get("bytes_sent", 0)
    fid = r.get("fidelity", {})
    agree = f"cosine {fid['cosine']:.6f}" if "cosine" in fid else \
        f"top-1 {fid.get('top1_agree')}, max err {fid.get('max_abs_error', 0):.1e}"
    agree += broken_sessions(fid)
    wire = human_bytes(r["wire_bytes"]) if r.get("wire_bytes") else "-"
    return (f"| {label(r)} | {r['net']} ({KIND[r['net']]}) | {off['seconds']:.3g}"
            f"{_spread(r, 'offline')} | {on['seconds']:.3g}{_spread(r, 'online')} | "
            f"{human_bytes(on['bytes_sent'])} / {human_bytes(server_on)} | {on['rounds']:g} | "
            f"{human_bytes(r['total_bytes'])} | {wire} | "
            f"{human_bytes(r.get('client_storage_bytes', 0))} | {r['time_ratio']:.3g} | "
            f"{agree} | {r.get('dealer', '')} |")


def write_markdown(records, out: Path, source: str) -> str:
    rows = latest(records)
    m = records[0]["machine"]
    lines = ["# Side by side: every protocol, every network", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), git {records[-1]['git']}; "
             f"`python -m benchmarks run ...` then `python -m benchmarks report {source}`. "
             "Dealer, server and client are separate processes (mTLS), one thread each; one "
             "inference per session; seconds are medians of the sessions (spread in "
             "brackets). Bytes are payload bytes from the meters; `wire` is what the proxy "
             "counted on the client-server link per session (TLS and HTTP/2 included). "
             "Modelled rows add rounds x RTT + bytes / bandwidth to the loopback run "
             "(LAN: 0.5 ms, 1 Gbit/s; WAN: 40 ms, 100 Mbit/s); proxy rows are measured through "
             "the shaped link (the dealer link is never shaped). Ratio: online seconds over "
             "the plaintext forward of the same model on this CPU, one thread.", "",
             EE_NOTE, "", "Commands behind these records:", ""]
    lines += [f"    {c}" for c in dict.fromkeys(r["params"].get("command", "") for r in records)
              if c] + [""]
    lines += crypten_comparison(rows)
    groups = sorted({(k[0], k[1] or 0) for k in rows})
    for model, seq in groups:
        lines += [f"## {model}" + (f", {seq} tokens" if seq else ""), "",
                  "| protocol | network | offline s | online s | online sent client / server "
                  "| rounds | total bytes/inf | wire | client storage | online / plaintext | "
                  "fidelity | dealer |", "|" + "---|" * 12]
        keys = [k for k in rows if k[0] == model and (k[1] or 0) == seq]
        keys.sort(key=lambda k: (NET_ORDER.index(k[2]) if k[2] in NET_ORDER else 9, k[3]))
        lines += [_row(rows[k]) for k in keys] + [""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text)
    return text


def short_label(lab: str) -> str:
    """A plot tick for a row label: 'mpc [compare.method=bitdecomp, compare.bits=32]' ->
    'mpc\nbitdecomp, 32 bits'."""
    if " [" not in lab:
        return lab
    proto, rest = lab.split(" [", 1)
    parts = []
    for item in rest.rstrip("]").split(", "):
        key, _, value = item.partition("=")
        key = key.split(".")[-1]
        parts.append(value if key == "method" else f"{value} bits" if key == "bits"
                     else f"{key}={value}")
    return proto + "\n" + ", ".join(parts)


def plots(records, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = latest(records)
    made = []
    for model, seq in sorted({(k[0], k[1] or 0) for k in rows}):
        keys = [k for k in rows if k[0] == model and (k[1] or 0) == seq]
        protocols = sorted({k[3] for k in keys})
        nets = [n for n in NET_ORDER if any(k[2] == n for k in keys)]
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
        ticks = [short_label(p) for p in protocols]
        width = 0.8 / max(1, len(nets))
        for j, net in enumerate(nets):
            vals = [rows.get((model, seq or None, net, p), {}).get("online", {}).get("seconds", 0)
                    for p in protocols]
            axes[0].bar([i + j * width for i in range(len(protocols))], vals, width, label=net)
        axes[0].set(yscale="log", title="online seconds")
        axes[0].set_xticks([i + width * (len(nets) - 1) / 2 for i in range(len(protocols))])
        axes[0].legend(fontsize=7)
        base = [rows.get((model, seq or None, "loopback", p)) for p in protocols]
        client = [r["online"]["bytes_sent"] if r else 0 for r in base]
        server = [r["parties"].get("server", {}).get("online", {}).get("bytes_sent", 0) if r else 0
                  for r in base]
        axes[1].bar(ticks, [c + 1 for c in client], label="client sends")
        axes[1].bar(ticks, [s + 1 for s in server], bottom=[c + 1 for c in client],
                    label="server sends")
        axes[1].set(yscale="log", title="online bytes per party (loopback)")
        tops = [c + s + 2 for c, s in zip(client, server) if c + s]
        if tops:
            axes[1].set_ylim(bottom=min(tops) / 4)
        axes[1].legend(fontsize=7)
        off = [r["offline"]["seconds"] if r else 0 for r in base]
        on = [r["online"]["seconds"] if r else 0 for r in base]
        axes[2].bar(ticks, off, label="offline")
        axes[2].bar(ticks, on, bottom=off, label="online")
        axes[2].set(title="offline + online seconds (loopback)")
        axes[2].legend(fontsize=7)
        for ax in axes:
            ax.set_xticks(ax.get_xticks(), ticks, rotation=35, ha="right", fontsize=8)
        fig.suptitle(f"{model}" + (f", {seq} tokens" if seq else ""))
        fig.tight_layout()
        path = out / f"summary_{model}{f'_{seq}' if seq else ''}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    records = read_records(args.records, "summary")
    if not records:
        raise SystemExit(f"{args.records}: no records of `python -m benchmarks run`")
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_markdown(records, args.out, str(args.records)))
    for p in plots(records, args.out):
        print(f"plot: {p}")
