"""Attacks on equivariant encryption from the host's position, with recovery rates.

    python -m benchmarks ee-attacks [--deployments 3]

The host holds the transformed weights and sees every transformed input, hidden state and
output. Against MiniLM (and tiny-gpt for the weight attack), for each of ``--deployments``
fresh keys of the same model:
  frequency     frequency analysis of the permuted token stream: the host ranks the
                permuted ids it receives by count and maps them to the ranks of a public
                reference text (no weights needed). Recovery: the share of victim token
                occurrences mapped to their true id.
  weight-match  matching transformed embedding columns against the public base weights:
                a column is the base column with its entries permuted, so its sorted
                values identify it; then the hidden permutation from the rows, the FFN
                permutations from ff1's rows, and each head with its rotation by
                orthogonal Procrustes. Recovery: the share of vocabulary / features / heads
                recovered exactly.
  hidden-invert inversion of permuted hidden states without the weights: the host learns
                the feature permutation by matching per-feature statistics of the states it
                observes against the base model's on public text (optimal assignment), then
                inverts the first hidden state (after the embedding LayerNorm) by nearest
                neighbour over every (token, position) candidate of the base model.
                Recovery: the share of victim tokens recovered.
  cross-deployment  linking two deployments of one model without the base weights: the
                same sorted-column signature aligns their vocabularies.
Texts: the victim's queries and the attacker's reference come from different halves of
the public package descriptions installed in the environment (no download).
Records: ``benchmarks/results/ee.jsonl`` (``bench`` = ``ee-attack``, ``method`` = the
attack, ``fidelity.recovery_rate``); table in ``ee.md``.
"""

from __future__ import annotations

import argparse
import collections
import re
import sysconfig
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from benchmarks.ee import RESULTS, write_markdown
from benchmarks.records import append_records, base_record
from models.equivariant import EeKey, transform_weights
from models.registry import get_model


def public_texts(limit_chars: int = 400_000) -> tuple[list[str], list[str]]:
    """(victim lines, attacker reference lines): prose from the installed packages'
    METADATA files, alternating files between the two sides."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted(site.glob("*.dist-info/METADATA"))
    sides: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for i, f in enumerate(files):
        side = i % 2
        if sizes[side] >= limit_chars:
            continue
        for line in f.read_text(errors="ignore").splitlines():
            line = line.strip()
            if len(line.split()) >= 6 and not re.match(r"^[A-Za-z-]+: ", line) \
                    and re.search(r"[a-z]{3,} [a-z]{3,}", line):
                sides[side].append(line[:400])
                sizes[side] += len(line)
    return sides


def frequency_attack(tok, key: EeKey, victim, reference) -> dict:
    """Rank matching of unigram counts; the first and last real rows of every query are
    the tokenizer's [CLS] and [SEP], which the host reads off the row order."""
    ref_lines = [tok.ids(s) for s in reference]
    specials = {ref_lines[0][0], ref_lines[0][-1]}
    ref_counts = collections.Counter(t for ids in ref_lines for t in ids if t not in specials)
    lines = [tok.ids(s) for s in victim]
    true_ids = [t for ids in lines for t in ids]
    inverse = torch.argsort(key.vocab)                 # true id -> permuted id
    first, last = int(inverse[lines[0][0]]), int(inverse[lines[0][-1]])
    seen = collections.Counter(int(inverse[t]) for t in true_ids)
    rest = [(p, c) for p, c in seen.most_common() if p not in (first, last)]
    guess = {p: r for (p, _), (r, _) in zip(rest, ref_counts.most_common())}
    guess.update({first: ref_lines[0][0], last: ref_lines[0][-1]})
    hits = sum(guess.get(int(inverse[t])) == t for t in true_ids)
    distinct = sum(guess.get(p) == int(key.vocab[p]) for p in seen)
    return {"recovery_rate": hits / len(true_ids), "distinct_recovered": distinct / len(seen),
            "tokens": len(true_ids), "distinct": len(seen)}


def _signatures(emb: torch.Tensor) -> dict[bytes, list[int]]:
    sig = torch.sort(emb, dim=0).values.t().contiguous().numpy()
    out: dict[bytes, list[int]] = collections.defaultdict(list)
    for v, row in enumerate(sig):
        out[row.tobytes()].append(v)
    return out


def _match_columns(a: torch.Tensor, b: torch.Tensor) -> dict[int, int]:
    """Column v' of b -> a column of a with the same multiset of values (unique only)."""
    sig_a = _signatures(a)
    out = {}
    for row_b, cols in _signatures(b).items():
        hit = sig_a.get(row_b)
        if hit and len(hit) == 1 and len(cols) == 1:
            out[cols[0]] = hit[0]
    return out


def weight_match_attack(spec, base, w2, key: EeKey) -> dict:
    arch = spec.notes["ee"]
    vocab = _match_columns(base["embed.weight"], w2["embed.weight"])
    vocab_rate = sum(vocab.get(v) == int(key.vocab[v]) for v in range(arch["vocab"])) / arch["vocab"]
    cols_new = torch.tensor(list(vocab))
    cols_old = torch.tensor([vocab[v] for v in vocab])
    e_new, e_old = w2["embed.weight"][:, cols_new], base["embed.weight"][:, cols_old]
    hidden = torch.cdist(e_new, e_old).argmin(dim=1)   # rows: transformed -> base feature
    hidden_rate = float((hidden == key.hidden).double().mean())
    ffn_ok, heads_ok, n_ffn, n_heads = 0, 0, 0, 0
    dh = arch["d"] // arch["heads"]
    for i in range(arch["layers"]):
        f_new = w2[f"l{i}.ff1.weight"][:, torch.argsort(hidden)]   # columns back in base order
        ffn = torch.cdist(f_new, base[f"l{i}.ff1.weight"]).argmin(dim=1)
        ffn_ok += int((ffn == key.ffn[i]).sum())
        n_ffn += arch["ffn"]
        wq_new = w2[f"l{i}.qkv.weight"][:arch["d"], torch.argsort(hidden)]
        wq_old = base[f"l{i}.qkv.weight"][:arch["d"]]
        for g in range(arch["heads"]):
            new = wq_new[g * dh:(g + 1) * dh]
            best, best_h = None, -1
            for h in range(arch["heads"]):
                old = wq_old[h * dh:(h + 1) * dh]
                u, _, vt = torch.linalg.svd(old @ new.t())      # Procrustes: new = A^T old
                a = u @ vt
                res = float((a.t() @ old - new).norm() / new.norm())
                if best is None or res < best:
                    best, best_h = res, h
            heads_ok += int(best_h == int(key.heads[i][g]) and best < 1e-6)
            n_heads += 1
    return {"recovery_rate": vocab_rate, "hidden_rate": hidden_rate,
            "ffn_rate": ffn_ok / n_ffn, "heads_rate": heads_ok / n_heads}


def _first_state(w, ids, cfg):
    """The encoder's first hidden state (after the embedding LayerNorm) of token ids under
    weights ``w``: the same values the forward computes from one-hot rows, by lookup."""
    t = len(ids)
    h = w["embed.weight"].t()[torch.as_tensor(ids)] + w["pos"][:t] + w["type0"]
    return torch.nn.functional.layer_norm(h, (cfg.d,), w["embed_ln.weight"],
                                          w["embed_ln.bias"], eps=cfg.layernorm.eps)


def hidden_invert_attack(base, w2, key, tok, victim, reference, cfg, observed=400,
                         public=1500, inverted=60) -> dict:
    """``observed`` victim queries feed the statistics, ``public`` reference lines the
    base model's; the first ``inverted`` victim queries are inverted token by token."""
    inverse = torch.argsort(key.vocab)                 # true id -> the id the host receives
    with torch.no_grad():
        ref = torch.cat([_first_state(base, tok.ids(s), cfg) for s in reference[:public]])
        seen = [(_first_state(w2, inverse[torch.tensor(tok.ids(s))], cfg), tok.ids(s))
                for s in victim[:observed]]
    obs = torch.cat([h for h, _ in seen])
    # 1. the feature permutation from each feature's quantile profile (optimal assignment)
    qs = torch.linspace(0.01, 0.99, 33, dtype=ref.dtype)
    cost = torch.cdist(torch.quantile(obs, qs, dim=0).t(), torch.quantile(ref, qs, dim=0).t())
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = torch.from_numpy(cols[np.argsort(rows)])   # observed feature -> base feature
    perm_rate = float((perm == key.hidden).double().mean())
    # 2. invert: nearest (token, position) candidate of the base model, position by position
    by_pos: dict[int, list] = collections.defaultdict(list)
    for h, ids in seen[:inverted]:
        h0 = torch.empty_like(h)
        h0[:, perm] = h                                # back to the base feature order
        for t, true in enumerate(ids):
            by_pos[t].append((h0[t], true))
    hits = total = 0
    emb = base["embed.weight"].t()
    with torch.no_grad():
        for t, items in by_pos.items():
            cand = torch.nn.functional.layer_norm(emb + base["pos"][t] + base["type0"], (cfg.d,),
                                                  base["embed_ln.weight"], base["embed_ln.bias"],
                                                  eps=cfg.layernorm.eps)
            guess = torch.cdist(torch.stack([h for h, _ in items]), cand).argmin(dim=1)
            hits += sum(int(g) == true for g, (_, true) in zip(guess, items))
            total += len(items)
    return {"recovery_rate": hits / total, "permutation_rate": perm_rate, "tokens": total,
            "observed_queries": len(seen), "reference_lines": public}


def cross_deployment_attack(w_a, w_b, key_a: EeKey, key_b: EeKey) -> dict:
    link = _match_columns(w_a["embed.weight"], w_b["embed.weight"])  # b's id -> a's id
    inv_a = torch.argsort(key_a.vocab)
    right = sum(link.get(int(torch.argsort(key_b.vocab)[t])) == int(inv_a[t])
                for t in range(len(key_a.vocab)))
    return {"recovery_rate": right / len(key_a.vocab)}


NEEDS = {"frequency": "permuted token stream + public text", "weight-match":
         "transformed weights + public base weights", "hidden-invert":
         "observed hidden states + public base model (not the transformed weights)",
         "cross-deployment": "two deployments' transformed weights only"}
RECOVERS = {"frequency": "victim tokens", "weight-match": "vocabulary permutation (also "
            "features, FFN, heads: params)", "hidden-invert": "victim tokens",
            "cross-deployment": "vocabulary alignment between deployments"}


def _record(model, method, k, result) -> dict:
    return base_record("ee-attack", model=model, protocol="ee", method=method,
                       params={"deployment_index": k, "needs": NEEDS[method],
                               "recovers": RECOVERS[method],
                               **{n: v for n, v in result.items() if n != "recovery_rate"}},
                       fidelity={"recovery_rate": result["recovery_rate"]}, threads=1,
                       net="none", dealer="none")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks ee-attacks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deployments", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from models.minilm import CONFIG, Tokenizer
    tok = Tokenizer()
    victim, reference = public_texts()
    print(f"[ee-attacks] texts: {len(victim)} victim lines, {len(reference)} reference lines",
          flush=True)
    recs, prev = [], None
    for name in ("minilm", "tiny-gpt"):
        spec = get_model(name)
        base = {k: v.to(torch.float64) for k, v in spec.load_weights().items()}
        for k in range(args.deployments):
            key = EeKey.generate(spec)
            w2 = transform_weights(spec, base, key)
            results = {"weight-match": weight_match_attack(spec, base, w2, key)}
            if name == "minilm":
                results["frequency"] = frequency_attack(tok, key, victim, reference)
                results["hidden-invert"] = hidden_invert_attack(base, w2, key, tok, victim,
                                                                reference, CONFIG)
                if prev is not None:
                    results["cross-deployment"] = cross_deployment_attack(prev[0], w2, prev[1], key)
                prev = (w2, key)
            for method, res in results.items():
                print(f"[ee-attacks] {name} deployment {k}: {method} recovery "
                      f"{res['recovery_rate']:.4f} {res}", flush=True)
                recs.append(_record(name, method, k, res))
    append_records(args.out / "ee.jsonl", recs)
    print(write_markdown(args.out))
