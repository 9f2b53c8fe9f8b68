"""KV-cache eviction for private decoding, written against Ops (plain tensors and shares).

Cache rows [0, P) hold the prompt (P: the public bucket), rows [P, L) the generated
tokens. A policy sees the prefill's attention (``observe_prefill``), may compact the
prompt's cache once when the prefill ends (``finish_prefill``: look-once static eviction),
and at every decode step gives the parts of the cache a query attends to (``parts``):
public row ranges of a cached tensor (free to pick) or rows gathered by a secret one-hot
(fresh tensors). Scores (``score``) are separate from selection (``select``). Budgets are
public configuration, never data-dependent; selected indices are never opened. Every
policy declares what it reveals in ``reveals`` (all of these: nothing).

  full          every row (the baseline: cached K/V masks, a step opens q, the new rows, P)
  streamingllm  sinks (the first ``sinks`` rows) + the most recent rows: positions only
  h2o           look-once: the prompt rows with the most attention, summed over the whole
                prefill (all queries, all heads), top budget - window rows by a secret
                one-hot, compacted once; + the last ``window`` rows
  mpcache       look-once static eviction (clusters of ``cluster`` rows, importance from the
                last ``static_queries`` of the prompt's queries, ``static_budget`` rows
                kept) + per-step query-aware selection of clusters scored against
                alpha * max + (1 - alpha) * min of each cluster's keys (no per-token
                q.k), the same selection shared by ``share`` adjacent layers; + the sink
                cluster and the last cluster

Cost per decode step and layer under mpc (fss): streamingllm and h2o attend to ``budget``
rows (all cached: no selection cost); mpcache adds [q+, q-] . summaries (one cached
product: opens the query's two halves), ranks of the coarse and then the fine clusters
(n(n-1)/2 + k*n comparisons per level and layer group) and two gathers
(opening the k x n one-hot twice) whose results are fresh (about 2 * budget * d more).
Leaks: nothing beyond the public budgets and bucket; the reveal log holds only tokens.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from models.kv_select import top_k_onehot
from protocols.config import KvConfig as EvictionConfig

PEN = -30.0


@dataclass
class Part:
    """Keys and values a decode step attends to: cached operands (``cached``) or fresh
    tensors; ``valid``: (B, rows) or (B, H, rows) row validity (a backend value)."""

    k: object
    v: object
    valid: object
    cached: bool


class Policy(abc.ABC):
    name = "policy"
    reveals: tuple[str, ...] = ()

    def __init__(self, cfg: EvictionConfig):
        self.cfg = cfg

    def active(self, prompt_len: int) -> bool:
        return prompt_len > self.cfg.budget

    def observe_prefill(self, ops, layer, probs, cache, query_start: int) -> None:
        """Sees one prefill chunk's attention weights (B, H, n, rows so far)."""

    def finish_prefill(self, ops, cache) -> None:
        """Look-once static step when the prompt is in the cache."""

    def score(self, ops, layer, q, cache):
        return None

    def select(self, ops, scores, cache):
        return None

    @abc.abstractmethod
    def parts(self, ops, layer, q, cache) -> list[Part]:
        """What a decode step at ``layer`` attends to."""


def _rows(ops, cache, layer, start, count) -> Part:
    return Part(ops.cached_rows(cache.k[layer], start, count),
                ops.cached_rows(cache.v[layer], start, count),
                ops.narrow(cache.valid, -1, start, count), True)


def _add_importance(ops, cache, layer, imp):
    """Accumulate (B, rows) importance; earlier chunks saw fewer rows (zero-padded)."""
    old = cache.importance.get(layer)
    if old is not None:
        have, want = ops.shape(old)[-1], ops.shape(imp)[-1]
        if have < want:
            zeros = ops.mul_public(ops.narrow(imp, -1, 0, want - have), 0.0)
            old = ops.cat([old, zeros], -1)
        imp = ops.add(old, imp)
    cache.importance[layer] = imp


class StreamingLLM(Policy):
    name = "streamingllm"

    def parts(self, ops, layer, q, cache):
        s, p, n = self.cfg.sinks, cache.prompt_len, cache.length
        start = p - (self.cfg.budget - s)
        return [_rows(ops, cache, layer, 0, s), _rows(ops, cache, layer, start, n - start)]


class H2O(Policy):
    name = "h2o"

    def observe_prefill(self, ops, layer, probs, cache, query_start):
        _add_importance(ops, cache, layer, ops.sum(ops.sum(probs, 1), 1))

    def finish_prefill(self, ops, cache):
        p, w = cache.prompt_len, self.cfg.window
        for i in range(cache.cfg.layers):
            imp = ops.narrow(cache.importance[i], -1, 0, p - w)                 # (B, p - w)
            sel = top_k_onehot(ops, imp, self.cfg.budget - w)                    # (B, k, p - w)
            cache.static[i] = _gather_rows(ops, cache, i, sel, 0, p - w, f"l{i}.h2o")

    def parts(self, ops, layer, q, cache):
        p, w, n = cache.prompt_len, self.cfg.window, cache.length
        k, v, valid = cache.static[layer]
        return [Part(k, v, valid, True), _rows(ops, cache, layer, p - w, n - p + w)]


def _gather_rows(ops, cache, i, sel, start, count, key, cluster=1):
    """Compact rows [start, start + count) of layer i by a secret one-hot over rows (or
    clusters) shared by all heads; the result is a new cached tensor (opened once)."""
    b = ops.shape(sel)[0]
    k_sel = ops.shape(sel)[-2]
    sel4 = ops.reshape(sel, (b, 1, k_sel, ops.shape(sel)[-1]))
    kv = []
    for t in (cache.k[i], cache.v[i]):
        g = ops.matmul_cached(sel4, ops.cached_rows(t, start, count, cluster), integer=True)
        s = ops.shape(g)
        kv.append(ops.reshape(g, s[:-2] + (k_sel * cluster, s[-1] // cluster)))
    valid = ops.reshape(ops.narrow(cache.valid, -1, start, count), (b, count // cluster, cluster))
    valid = ops.reshape(ops.matmul(sel, valid, integer=True), (b, k_sel * cluster))
    k, v = ops.cache_append([(f"{key}.k", None, kv[0], 2), (f"{key}.v", None, kv[1], 2)])
    return k, v, valid


class MPCache(Policy):
    """MPCache with a two-level query-aware selection (see the module docstring).

    Candidates: rows [c, c + n_f c) in n_f fine clusters of c rows, grouped ``coarse`` to a
    coarse cluster (n_f a multiple of ``coarse``); the sink cluster [0, c) and every row
    after the candidates are always attended. Per decode step and layer group:
      1. q+ = relu(q), q- = q - q+ (dh comparisons per head);
      2. coarse scores q+ . max + q- . min over cached coarse summaries: this is
         sum_d max(q_d max_d, q_d min_d), the exact bound on q.k in the cluster ("bound";
         "alpha" scores q . (alpha max + (1 - alpha) min), the paper's); opens q only;
      3. top ``coarse_keep`` coarse clusters (secret one-hot S1);
      4. fine scores of every fine cluster the same way; S1 gathers the children's scores;
         top budget/c - 2 of them (S2); S = S2 composed with S1 is a one-hot over fine
         clusters; two cached products gather K and V rows (fresh tensors).
    Look-once static eviction (``static_budget`` > 0): at the end of the prefill, the fine
    clusters with the most attention from the last ``static_queries`` of the prompt
    queries (summed over heads and the group's layers) are compacted by a secret one-hot
    into new cached tensors, and the dynamic selection runs over those."""

    name = "mpcache"

    def _layout(self, p):
        c, co = self.cfg.cluster, self.cfg.coarse
        n_f = (p - 2 * c) // (c * co) * co
        return c, co, n_f

    def active(self, prompt_len):
        c, co, n_f = self._layout(prompt_len)
        return n_f > self.cfg.budget // c - 2

    def _flat(self, n_f) -> bool:
        """One level when there is no coarse grouping or too few coarse clusters."""
        return self.cfg.coarse == 1 or n_f // self.cfg.coarse <= self.cfg.coarse_keep

    def observe_prefill(self, ops, layer, probs, cache, query_start):
        if not self.cfg.static_budget:
            return
        p = cache.prompt_len_hint
        first = p - max(1, int(round(self.cfg.static_queries * p)))
        n = ops.shape(probs)[2]
        skip = max(0, first - query_start)
        if skip < n:
            late = ops.narrow(probs, 2, skip, n - skip)
            _add_importance(ops, cache, layer, ops.sum(ops.sum(late, 1), 1))

    def _groups(self, layers):
        return [range(g, min(g + self.cfg.share, layers)) for g in range(0, layers, self.cfg.share)]

    def finish_prefill(self, ops, cache):
        c, co, n_f = self._layout(cache.prompt_len)
        keep = self.cfg.static_budget // c
        for layers in self._groups(cache.cfg.layers):
            if self.cfg.static_budget and keep < n_f:
                imp = None
                for i in layers:
                    imp = cache.importance[i] if imp is None else ops.add(imp, cache.importance[i])
                b = ops.shape(imp)[0]
                imp = ops.sum(ops.reshape(ops.narrow(imp, -1, c, n_f * c), (b, n_f, c)), -1)
                sel = top_k_onehot(ops, imp, keep)                               # (B, keep, n_f)
                for i in layers:
                    cache.static[i] = _gather_rows(ops, cache, i, sel, c, n_f * c,
                                                   f"l{i}.mpc", cluster=c)
            else:
                for i in layers:
                    cache.static[i] = (cache.k[i], cache.v[i], None)
            g = layers[0]
            cache.summary[g] = self._summaries(ops, cache, g, n_f if not self.cfg.static_budget
                                               or keep >= n_f else keep)

    def _candidates(self, ops, cache, i, n_f):
        """(K, V, validity (B, n_f c)) of the candidate rows as cached views' sources."""
        c = self.cfg.cluster
        k, v, valid = cache.static[i]
        if valid is None:                          # no static step: rows [c, c + n_f c)
            return k, v, ops.narrow(cache.valid, -1, c, n_f * c), c
        return k, v, valid, 0

    def _summaries(self, ops, cache, g, n_f):
        """One cached tensor per layer group (opened once: it never changes): rows are the
        fine clusters, then (two levels) the coarse ones; columns are max then min of the
        candidates' keys per head, (B, H, n_f [+ n_c], 2 dh); with the "alpha" score both
        halves hold alpha max + (1 - alpha) min."""
        c, co = self.cfg.cluster, self.cfg.coarse
        k, _, _, start = self._candidates(ops, cache, g, n_f)
        x = ops.narrow(ops.cached_value(k), 2, start, n_f * c)
        b, h, _, dh = ops.shape(x)
        x = ops.permute(ops.reshape(x, (b, h, n_f, c, dh)), (0, 1, 2, 4, 3))  # (.., n_f, dh, c)
        both = ops.max_last(ops.cat([x, ops.neg(x)], 0))                      # max and -min
        fine = ops.reshape(both, (2 * b, h, n_f, dh))
        y = ops.permute(ops.reshape(fine, (2 * b, h, n_f // co, co, dh)), (0, 1, 2, 4, 3))
        coarse = ops.reshape(ops.max_last(y), (2 * b, h, n_f // co, dh))
        hi, lo = ops.narrow(fine, 0, 0, b), ops.neg(ops.narrow(fine, 0, b, b))
        chi, clo = ops.narrow(coarse, 0, 0, b), ops.neg(ops.narrow(coarse, 0, b, b))
        if self.cfg.score == "alpha":
            a = self.cfg.alpha
            hi = lo = ops.add(ops.mul_public(hi, a), ops.mul_public(lo, 1.0 - a))
            chi = clo = ops.add(ops.mul_public(chi, a), ops.mul_public(clo, 1.0 - a))
        rows = [ops.cat([hi, lo], -1)]
        if not self._flat(n_f):
            rows.append(ops.cat([chi, clo], -1))
        (summary,) = ops.cache_append([(f"l{g}.mpc.summary", None, ops.cat(rows, 2), 2)])
        return summary, n_f

    def score(self, ops, layer, q, cache):
        """Fine and coarse cluster scores (B, H, n) of the group leader's query, from one
        product with the cached summaries: [q+, q-] . [max, min] (opens q's halves only)."""
        summary, n_f = cache.summary[layer]
        if self.cfg.score == "bound":
            qp = ops.relu(q)
            qn = ops.sub(q, qp)
        else:
            qp = qn = ops.mul_public(q, 0.5)        # q . s = (q/2) . s + (q/2) . s
        s = ops.matmul_cached(ops.cat([qp, qn], -1), summary, transpose=True)   # (B, H, 1, rows)
        sh = ops.shape(s)
        s = ops.reshape(s, (sh[0], sh[1], sh[3]))
        out = [ops.narrow(s, -1, 0, n_f)]
        if sh[3] > n_f:
            out.append(ops.narrow(s, -1, n_f, sh[3] - n_f))
        return out

    def select(self, ops, scores, cache):
        """(B, H, picks, n_f) one-hot over fine clusters."""
        fine, coarse = scores[0], scores[-1]
        picks = self.cfg.budget // self.cfg.cluster - 2
        co = self.cfg.coarse
        b, h, n_f = ops.shape(fine)
        if self._flat(n_f):
            return top_k_onehot(ops, fine, picks)
        k1 = self.cfg.coarse_keep
        s1 = top_k_onehot(ops, coarse, k1)                                      # (B, H, k1, n_c)
        kids = ops.matmul(s1, ops.reshape(fine, (b, h, n_f // co, co)), integer=True)
        s2 = top_k_onehot(ops, ops.reshape(kids, (b, h, k1 * co)), picks)      # (B, H, picks, k1 co)
        s2 = ops.permute(ops.reshape(s2, (b, h, picks, k1, co)), (0, 1, 4, 2, 3))
        full = ops.matmul(s2, ops.reshape(s1, (b, h, 1, k1, n_f // co)), integer=True)
        return ops.reshape(ops.permute(full, (0, 1, 3, 4, 2)), (b, h, picks, n_f))

    def parts(self, ops, layer, q, cache):
        c, co, n_f = self._layout(cache.prompt_len)
        g = layer - layer % self.cfg.share
        if layer == g:
            with ops.scope("select"):
                cache.selection[g] = self.select(ops, self.score(ops, layer, q, cache), cache)
        sel = cache.selection[g]
        b, h, picks, n_sel = ops.shape(sel)
        k, v, valid, start = self._candidates(ops, cache, layer, n_sel)
        with ops.scope("gather"):
            kv = []
            for t in (k, v):
                x = ops.matmul_cached(sel, ops.cached_rows(t, start, n_sel * c, c), integer=True)
                kv.append(ops.reshape(x, (b, h, picks * c, ops.shape(x)[-1] // c)))
            valid = ops.matmul(sel, ops.reshape(valid, (b, 1, n_sel, c)), integer=True)
            valid = ops.reshape(valid, (b, h, picks * c))
        rest = c + n_f * c
        return [_rows(ops, cache, layer, 0, c), Part(kv[0], kv[1], valid, False),
                _rows(ops, cache, layer, rest, cache.length - rest)]


POLICIES = {"streamingllm": StreamingLLM, "h2o": H2O, "mpcache": MPCache}


def make_policy(cfg: EvictionConfig | None) -> Policy | None:
    if cfg is None or cfg.method == "full":
        return None
    return POLICIES[cfg.method](cfg)


def attend(ops, q, parts: list[Part], softmax):
    """One decode step's attention over the parts: (B, H, 1, dh)."""
    scores = []
    for part in parts:
        if part.cached:
            s = ops.matmul_cached(q, part.k, transpose=True)
        else:
            s = ops.matmul(q, ops.permute(part.k, (0, 1, 3, 2)))
        shape = ops.shape(part.valid)
        pen = ops.mul_public(ops.add_public(ops.neg(part.valid), 1.0), PEN)
        view = (shape[0], 1, 1, shape[1]) if len(shape) == 2 else (shape[0], shape[1], 1, shape[2])
        scores.append(ops.add(s, ops.reshape(pen, view)))
    widths = [ops.shape(s)[-1] for s in scores]
    p = softmax(ops.cat(scores, -1))
    out, at = None, 0
    for part, w in zip(parts, widths):
        pw = ops.narrow(p, -1, at, w)
        at += w
        c = ops.matmul_cached(pw, part.v) if part.cached else ops.matmul(pw, part.v)
        out = c if out is None else ops.add(out, c)
    return out
