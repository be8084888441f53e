"""The item model behind next-item recommendations, and the per-user memory it reads.

The model has a global part trained offline on users' event sequences and a small per-user
part (:class:`UserItemMemory`) updated online one event at a time. The score of item ``j`` for
a user whose most recent items are ``i_1`` (newest), ``i_2``, ... is linear in sparse
item-item statistics:

    score(j) = sum_k t_k k^-g [ F[i_k, j] / (mF_i + 1)^b + r_b B[i_k, j] / (mB_i + 1)^b ]
             + r_a sum_{k <= 3} t_k k^-g  P_attr(j | i_k)
             + r_l u . P(j | attribute)     (long-term vector u over item attributes)
             + r_c mean_{i in recent} C~[i, j]  + r_p log(1 + count_j)

``F[i, j]`` sums ``1/d`` over users where ``j`` follows ``i`` ``d`` steps later (``B`` is its
transpose, "i follows j"), ``mF``/``mB`` are the row masses, ``C~`` the user co-occurrence
normalised by ``row mass + 5``, ``P_attr(j | i)`` spreads ``i`` uniformly over its attributes
and each attribute over its items by popularity, and ``t_k`` is the event-type weight of the
``k``-th recent event. The seven numbers ``g, b, r_b, r_a, r_l, r_c, r_p``
(:class:`ScorerParams`) are learned by coordinate ascent on HR@20 + NDCG@20 of each training
sequence's last item predicted from the items before it, so nothing is tuned on test data.

The long-term vector ``u`` minimises ``sum_i w_i |u - a_i|^2`` over the user's events (``a_i``
the item's attribute distribution, ``w_i`` the type weight): ``u = sum_i w_i a_i / W``, which
the SGD step ``u += (w / W) (a_i - u)`` reaches too; the memory keeps the numerator and ``W``.

>>> seqs = [[ItemInteraction(i) for i in s] for s in (["a", "b", "c"], ["a", "b", "d"])] * 3
>>> model = train_item_model(seqs, {"c": ["x"], "d": ["x"]}, params=ScorerParams())
>>> memory = update_memory(None, model, "a", "purchase", 0)
>>> scores = score_users(model, [memory])[0]
>>> model.item_ids[int(scores.argmax())]
'b'
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from operators.profile import UserItemMemory

RECENT_ITEMS = 20  # short-term memory: the newest events kept per user
LONG_TERM_ATTRS = 64  # the long-term vector keeps its largest attribute weights only
TRANSITION_LAGS = 8  # how many recent items vote through transitions
ATTRIBUTE_LAGS = 3  # how many recent items vote through their attributes
COOC_SMOOTHING = 5.0  # pseudo-count in the co-occurrence normalisation


@dataclass(frozen=True)
class ItemInteraction:
    """One event of a user's history, as the offline trainer reads it."""

    item_id: str
    type: str = "purchase"
    ts_ms: int = 0
    category: str | None = None
    brand: str | None = None


@dataclass(frozen=True)
class ScorerParams:
    """The weights of the score's terms (see the module docstring)."""

    recency: float = 1.0  # g: the k-th newest item votes with k^-g
    source_norm: float = 0.5  # b: damp the votes of items followed by many others
    backward: float = 0.5  # r_b: "j came before i" relative to "j came after i"
    attr_short: float = 1.0  # r_a
    attr_long: float = 1.0  # r_l
    cooc: float = 1.0  # r_c
    popularity: float = 0.01  # r_p


@dataclass(frozen=True, eq=False)
class ItemModel:
    """The global, offline-trained part of the recommender; immutable once trained."""

    version: str
    item_ids: list[str]
    attribute_ids: list[str]
    forward: sp.csr_matrix  # F, top neighbours per row
    backward: sp.csr_matrix  # B = F^T, top neighbours per row
    cooc: sp.csr_matrix  # C~, top neighbours per row
    forward_mass: np.ndarray  # row sums of F before truncation
    backward_mass: np.ndarray
    attr_in: sp.csr_matrix  # (items, attributes): P(attribute | item)
    attr_out: sp.csr_matrix  # (attributes, items): P(item | attribute)
    counts: np.ndarray  # events per item in the training data
    item_category: np.ndarray  # index into categories, -1 when unknown
    categories: list[str]
    params: ScorerParams
    type_weights: dict[str, float]
    manifest: dict[str, Any]
    index: dict[str, int] = field(init=False, repr=False)

    attributes_of: list[list[tuple[int, float]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {item: i for i, item in enumerate(self.item_ids)})
        # Each item's row of attr_in as plain pairs: slicing a scipy matrix per event is slow.
        indptr, indices, data = self.attr_in.indptr, self.attr_in.indices, self.attr_in.data
        rows = [
            list(zip(indices[a:b].tolist(), data[a:b].tolist(), strict=True))
            for a, b in itertools.pairwise(indptr.tolist())
        ]
        object.__setattr__(self, "attributes_of", rows)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def type_weight(self, event_type: str) -> float:
        return self.type_weights.get(event_type, 1.0)

    def remember(
        self,
        memory: UserItemMemory | None,
        item_id: str,
        event_type: str,
        ts_ms: int,
        evicted: set[str] | None = None,
    ) -> UserItemMemory:
        """Fold one event into a user's memory (the profile step's :class:`ItemMemoryModel`)."""
        return update_memory(memory, self, item_id, event_type, ts_ms, evicted)


def update_memory(
    memory: UserItemMemory | None,
    model: ItemModel,
    item_id: str,
    event_type: str,
    ts_ms: int,
    evicted: set[str] | None = None,
) -> UserItemMemory:
    """Return the memory after one event; the input is not modified.

    Events whose type weighs 0 (refunds, removals) leave the memory as it is. A memory built
    against another model version first rebuilds its long-term vector from its recent items,
    since attribute indices differ between versions. Attributes dropped from the long-term
    vector (it keeps the :data:`LONG_TERM_ATTRS` largest) are added to ``evicted``.
    """
    weight = model.type_weight(event_type)
    if memory is None:
        memory = UserItemMemory(model.version)
    elif memory.model_version != model.version:
        memory = _rebuild(memory, model)
    if weight <= 0:
        return memory
    recent = [*memory.recent, (item_id, event_type, ts_ms)][-RECENT_ITEMS:]
    long_term, total = dict(memory.long_term), memory.long_term_weight
    item = model.index.get(item_id)
    if item is not None:
        total += weight
        for a, p in model.attributes_of[item]:
            long_term[a] = long_term.get(a, 0.0) + weight * p
        while len(long_term) > LONG_TERM_ATTRS:
            smallest = min(long_term, key=long_term.__getitem__)
            del long_term[smallest]
            if evicted is not None:
                evicted.add(str(smallest))
    return UserItemMemory(model.version, recent, long_term, total, memory.seen + 1)


def _rebuild(memory: UserItemMemory, model: ItemModel) -> UserItemMemory:
    fresh = UserItemMemory(model.version, seen=memory.seen - len(memory.recent))
    for item_id, event_type, ts_ms in memory.recent:
        fresh = update_memory(fresh, model, item_id, event_type, ts_ms)
    return fresh


def user_queries(
    model: ItemModel, memories: Sequence[UserItemMemory | None], params: ScorerParams | None = None
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The users' scores as sparse vectors: item space (transitions, co-occurrence) and
    attribute space (to multiply by ``attr_out``), one row per memory."""
    p = params or model.params
    n, n_items = len(memories), model.n_items
    rows, items, f_vals, b_vals, a_vals, c_vals = [], [], [], [], [], []
    for u, memory in enumerate(memories):
        known = _known_recent(model, memory)
        for k, (item, tw) in enumerate(reversed(known), start=1):
            vote = tw * k**-p.recency
            rows.append(u)
            items.append(item)
            f_vals.append(vote if k <= TRANSITION_LAGS else 0.0)
            b_vals.append(vote * p.backward if k <= TRANSITION_LAGS else 0.0)
            a_vals.append(vote * p.attr_short if k <= ATTRIBUTE_LAGS else 0.0)
            c_vals.append(p.cooc / len(known))

    def votes(values: list[float], scale: np.ndarray | None = None) -> sp.csr_matrix:
        v = np.asarray(values, np.float64)
        if scale is not None and len(items):
            v = v * scale[items]
        return sp.csr_matrix((v, (rows, items)), shape=(n, n_items))

    damp_f = (model.forward_mass + 1.0) ** -p.source_norm
    damp_b = (model.backward_mass + 1.0) ** -p.source_norm
    item_space = (
        votes(f_vals, damp_f) @ model.forward
        + votes(b_vals, damp_b) @ model.backward
        + votes(c_vals) @ model.cooc
    )
    attr_space = votes(a_vals) @ model.attr_in + p.attr_long * _long_term_matrix(model, memories)
    return item_space.tocsr(), attr_space.tocsr()


def _known_recent(model: ItemModel, memory: UserItemMemory | None) -> list[tuple[int, float]]:
    """The memory's recent items the model knows, oldest first, with their type weights."""
    if memory is None:
        return []
    recent = memory.recent
    return [(model.index[i], model.type_weight(t)) for i, t, _ in recent if i in model.index]


def _long_term_matrix(model: ItemModel, memories: Sequence[UserItemMemory | None]) -> sp.csr_matrix:
    rows, attrs, vals = [], [], []
    for u, memory in enumerate(memories):
        for a, w in (memory.long_term_vector() if memory else {}).items():
            rows.append(u)
            attrs.append(a)
            vals.append(w)
    shape = (len(memories), len(model.attribute_ids))
    return sp.csr_matrix((vals, (rows, attrs)), shape=shape)


def score_users(
    model: ItemModel,
    memories: Sequence[UserItemMemory | None],
    params: ScorerParams | None = None,
    chunk: int = 2048,
) -> np.ndarray:
    """Scores of every item for each memory, shape (len(memories), n_items), float32.

    Works in chunks of users so that ranking 35k users x 18k items stays within memory when
    the caller consumes the result chunk by chunk (call it per chunk for that)."""
    p = params or model.params
    prior = (p.popularity * np.log1p(model.counts)).astype(np.float32)
    out = np.empty((len(memories), model.n_items), np.float32)
    for start in range(0, len(memories), chunk):
        item_space, attr_space = user_queries(model, memories[start : start + chunk], p)
        block = item_space.toarray() + (attr_space @ model.attr_out).toarray()
        out[start : start + chunk] = block + prior
    return out


def train_item_model(
    sequences: Iterable[Sequence[ItemInteraction]],
    attributes: Mapping[str, Sequence[str]] | None = None,
    *,
    params: ScorerParams | None = None,
    type_weights: Mapping[str, float] | None = None,
    version: str | None = None,
    max_neighbours: int = 100,
    window: int = 50,
    learn_users: int = 8000,
    seed: int = 0,
) -> ItemModel:
    """Train the global model on users' event sequences (each in time order).

    ``attributes`` maps item ids to attribute ids (category path nodes, brand); each event's
    category and brand are added to them. ``params=None`` learns the :class:`ScorerParams` on
    the last event of each sequence (a validation split inside the training data).
    ``type_weights`` default to 1 for every type seen.
    """
    started = time.time()
    seqs = [list(s) for s in sequences]
    seqs = [s for s in seqs if s]
    counts = Counter(e.type for s in seqs for e in s)
    weights = {t: 1.0 for t in counts} | dict(type_weights or {})
    if params is None:
        prefixes = [s[:-1] for s in seqs if len(s) >= 2]
        draft = _fit(prefixes, attributes, ScorerParams(), weights, "draft", max_neighbours, window)
        targets = [s[-1].item_id for s in seqs if len(s) >= 2]
        params = learn_params(draft, prefixes, targets, learn_users, seed)
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    model = _fit(seqs, attributes, params, weights, version, max_neighbours, window)
    ts = [e.ts_ms for s in seqs for e in s]
    model.manifest.update(
        n_users=len(seqs),
        n_events=len(ts),
        first_ts_ms=min(ts, default=0),
        last_ts_ms=max(ts, default=0),
        event_types=dict(counts),
        train_seconds=round(time.time() - started, 1),
    )
    return model


def _fit(
    seqs: list[list[ItemInteraction]],
    attributes: Mapping[str, Sequence[str]] | None,
    params: ScorerParams,
    type_weights: dict[str, float],
    version: str,
    max_neighbours: int,
    window: int,
) -> ItemModel:
    attributes = attributes or {}
    index: dict[str, int] = {}
    for s in seqs:
        for e in s:
            index.setdefault(e.item_id, len(index))
    for item in attributes:
        index.setdefault(item, len(index))
    n = len(index)
    ids = [[index[e.item_id] for e in s] for s in seqs]
    counts = np.bincount([i for s in ids for i in s], minlength=n).astype(np.float64)

    forward = _transitions(ids, n, window)
    backward = forward.T.tocsr()
    users = _user_items(ids, n)
    cooc = (users.T @ users).tocsr()
    cooc.setdiag(0)
    cooc.eliminate_zeros()
    cooc = sp.diags(1.0 / (_row_mass(cooc) + COOC_SMOOTHING)) @ cooc

    item_attrs: dict[str, set[str]] = {
        item: {f"a:{a}" for a in attrs} for item, attrs in attributes.items()
    }
    category_of: dict[int, str] = {}
    for s in seqs:
        for e in s:
            extra = {f"c:{e.category}"} if e.category else set()
            extra |= {f"b:{e.brand}"} if e.brand else set()
            item_attrs.setdefault(e.item_id, set()).update(extra)
            if e.category:
                category_of[index[e.item_id]] = e.category
    attribute_ids = sorted({a for attrs in item_attrs.values() for a in attrs})
    attr_index = {a: k for k, a in enumerate(attribute_ids)}
    pairs = [(index[i], attr_index[a]) for i, attrs in item_attrs.items() for a in attrs]
    has = sp.csr_matrix(
        (np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])),
        shape=(n, len(attribute_ids)),
    )
    attr_in = sp.diags(1.0 / np.maximum(_row_mass(has), 1.0)) @ has
    by_pop = (has.multiply((counts + 1.0)[:, None])).T.tocsr()
    attr_out = sp.diags(1.0 / np.maximum(_row_mass(by_pop), 1e-12)) @ by_pop

    categories = sorted(set(category_of.values()))
    cat_index = {c: k for k, c in enumerate(categories)}
    item_category = np.full(n, -1, np.int32)
    for i, c in category_of.items():
        item_category[i] = cat_index[c]
    top = max(type_weights.values(), default=1.0)
    return ItemModel(
        version=version,
        item_ids=list(index),
        attribute_ids=attribute_ids,
        forward=_top_neighbours(forward, max_neighbours),
        backward=_top_neighbours(backward, max_neighbours),
        cooc=_top_neighbours(cooc.tocsr(), max_neighbours),
        forward_mass=_row_mass(forward),
        backward_mass=_row_mass(backward),
        attr_in=attr_in.tocsr().astype(np.float32),
        attr_out=attr_out.tocsr().astype(np.float32),
        counts=counts,
        item_category=item_category,
        categories=categories,
        params=params,
        type_weights={t: w / top for t, w in type_weights.items()},
        manifest={"version": version, "created": datetime.now(UTC).isoformat(), "metrics": {}},
    )


def _transitions(ids: list[list[int]], n: int, window: int) -> sp.csr_matrix:
    """F[i, j] = sum of 1/d over the times j follows i d <= window steps later."""
    rows, cols, vals = [], [], []
    for s in ids:
        seq = np.asarray(s)
        for d in range(1, min(window, len(seq) - 1) + 1):
            rows.append(seq[:-d])
            cols.append(seq[d:])
            vals.append(np.full(len(seq) - d, 1.0 / d))
    if not rows:
        return sp.csr_matrix((n, n))
    f = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    f.setdiag(0)
    f.eliminate_zeros()
    return f


def _user_items(ids: list[list[int]], n: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(ids)), [len(s) for s in ids])
    cols = np.fromiter((i for s in ids for i in s), np.int64, count=len(rows))
    users = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(ids), n))
    users.data[:] = 1.0  # a user's repeated item counts once
    return users


def _row_mass(m: sp.spmatrix) -> np.ndarray:
    return np.asarray(m.sum(axis=1)).ravel()


def _top_neighbours(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row: bounds the model's size and scoring cost."""
    m = m.tocsr()
    indptr, indices, data = [0], [], []
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        keep = np.argsort(-m.data[lo:hi], kind="stable")[:k] + lo
        keep.sort()
        indices.append(m.indices[keep])
        data.append(m.data[keep])
        indptr.append(indptr[-1] + len(keep))
    return sp.csr_matrix(
        (
            np.concatenate(data or [np.zeros(0)]).astype(np.float32),
            np.concatenate(indices or [np.zeros(0, np.int32)]),
            indptr,
        ),
        shape=m.shape,
    )


#: Coordinate-ascent grids for :func:`learn_params`; the terms' scales differ by orders of
#: magnitude, hence the wide log grids.
PARAM_GRIDS: dict[str, list[float]] = {
    "recency": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0],
    "source_norm": [0.0, 0.25, 0.5, 0.75, 1.0],
    "backward": [0.0, 0.1, 0.25, 0.5, 1.0, 2.0],
    "attr_short": [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
    "attr_long": [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
    "cooc": [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
    "popularity": [0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1],
}


def learn_params(
    model: ItemModel,
    histories: Sequence[Sequence[ItemInteraction]],
    targets: Sequence[str],
    n_users: int = 8000,
    seed: int = 0,
    candidates: int = 100,
) -> ScorerParams:
    """Coordinate ascent on HR@20 + NDCG@20 of ``targets`` given ``histories``.

    Each user's target is ranked among the ``candidates`` best items of each kind of term
    (transitions and co-occurrence, attributes, popularity): drawing them from one term only
    would let the other terms' favourites outside the pool go unpunished. The score is linear
    in a handful of per-(user, item) features, so each grid point costs one vectorised pass
    over (users x candidates)."""
    rng = np.random.default_rng(seed)
    known = [u for u, t in enumerate(targets) if t in model.index]
    pick = rng.choice(known, min(n_users, len(known)), replace=False)
    memories: list[UserItemMemory | None] = []
    for u in pick:
        memory = None
        for e in histories[u]:
            memory = update_memory(memory, model, e.item_id, e.type, e.ts_ms)
        memories.append(memory)
    target = np.array([model.index[targets[u]] for u in pick])
    top = _candidate_pool(model, memories, candidates)
    top = np.where(top == target[:, None], -1, top)  # the target is column 0
    cols = np.concatenate([target[:, None], top], axis=1)
    features = _pair_features(model, memories, cols)

    def objective(p: ScorerParams) -> float:
        s = _pair_scores(features, p)
        s = np.where(cols < 0, -np.inf, s)
        rank = (s[:, 1:] > s[:, :1]).sum(axis=1)
        hit = rank < 20
        return float(hit.mean() + np.where(hit, 1.0 / np.log2(rank + 2), 0.0).mean())

    best, best_value = model.params, objective(model.params)
    for _ in range(3):
        improved = False
        for name, grid in PARAM_GRIDS.items():
            for value in grid:
                trial = replace(best, **{name: value})
                v = objective(trial)
                if v > best_value + 1e-6:
                    best, best_value, improved = trial, v, True
        if not improved:
            break
    return best


def _candidate_pool(
    model: ItemModel, memories: Sequence[UserItemMemory | None], per_term: int, chunk: int = 2048
) -> np.ndarray:
    """The top ``per_term`` unseen items of each term kind, per user (-1 pads duplicates)."""
    per_term = min(per_term, model.n_items - 1)
    pools = []
    for start in range(0, len(memories), chunk):
        block = memories[start : start + chunk]
        item_space, attr_space = user_queries(model, block)
        seen = [
            [model.index[i] for i, _, _ in m.recent if i in model.index] if m else [] for m in block
        ]
        picks = []
        popularity = np.tile(model.counts, (len(block), 1))
        for scores in (item_space.toarray(), (attr_space @ model.attr_out).toarray(), popularity):
            for r, items in enumerate(seen):
                scores[r, items] = -np.inf
            picks.append(np.argpartition(-scores, per_term - 1, axis=1)[:, :per_term])
        pools.append(np.concatenate(picks, axis=1))
    pool = np.sort(np.concatenate(pools), axis=1)
    pool[:, 1:][pool[:, 1:] == pool[:, :-1]] = -1  # a duplicate would count twice in a rank
    return pool


def _pair_features(
    model: ItemModel, memories: Sequence[UserItemMemory | None], cols: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-(user, candidate) raw features whose weighted sum is the score (cols < 0: none)."""
    n, c = cols.shape
    j = np.maximum(cols, 0).ravel()
    uu = np.repeat(np.arange(n), c)
    lag_item = np.full((n, TRANSITION_LAGS), -1)
    lag_w = np.zeros((n, TRANSITION_LAGS))
    cooc_rows, cooc_items, cooc_vals = [], [], []
    for u, memory in enumerate(memories):
        known = _known_recent(model, memory)
        cooc_rows += [u] * len(known)
        cooc_items += [item for item, _ in known]
        cooc_vals += [1.0 / len(known)] * len(known)
        for k, (item, tw) in enumerate(reversed(known[-TRANSITION_LAGS:])):
            lag_item[u, k], lag_w[u, k] = item, tw
    feats: dict[str, np.ndarray] = {"lag_w": lag_w}
    attr_out_t = model.attr_out.T.tocsr()
    for k in range(TRANSITION_LAGS):
        src = np.maximum(lag_item[uu, k], 0)
        valid = (lag_item[uu, k] >= 0).astype(np.float64)
        feats[f"F{k}"] = (np.asarray(model.forward[src, j]).ravel() * valid).reshape(n, c)
        feats[f"B{k}"] = (np.asarray(model.backward[src, j]).ravel() * valid).reshape(n, c)
        feats[f"mF{k}"] = model.forward_mass[lag_item[:, k].clip(0)][:, None]
        feats[f"mB{k}"] = model.backward_mass[lag_item[:, k].clip(0)][:, None]
        if k < ATTRIBUTE_LAGS:
            dot = _row_dots(model.attr_in, src, attr_out_t, j) * valid
            feats[f"A{k}"] = dot.reshape(n, c)
    votes = sp.csr_matrix((cooc_vals, (cooc_rows, cooc_items)), shape=(n, model.n_items))
    feats["C"] = np.asarray((votes @ model.cooc).tocsr()[uu, j]).ravel().reshape(n, c)
    long_term = _long_term_matrix(model, memories)
    feats["L"] = _row_dots(long_term, uu, attr_out_t, j).reshape(n, c)
    feats["P"] = np.log1p(model.counts[j]).reshape(n, c)
    return feats


def _row_dots(
    a: sp.csr_matrix, rows_a: np.ndarray, b: sp.csr_matrix, rows_b: np.ndarray
) -> np.ndarray:
    out = np.empty(len(rows_a))
    for s in range(0, len(rows_a), 200_000):
        block = a[rows_a[s : s + 200_000]].multiply(b[rows_b[s : s + 200_000]])
        out[s : s + 200_000] = np.asarray(block.sum(axis=1)).ravel()
    return out


def _pair_scores(f: dict[str, np.ndarray], p: ScorerParams) -> np.ndarray:
    s = p.cooc * f["C"] + p.attr_long * f["L"] + p.popularity * f["P"]
    for k in range(TRANSITION_LAGS):
        vote = f["lag_w"][:, k : k + 1] * (k + 1) ** -p.recency
        s = s + vote * f[f"F{k}"] * (f[f"mF{k}"] + 1) ** -p.source_norm
        s = s + vote * p.backward * f[f"B{k}"] * (f[f"mB{k}"] + 1) ** -p.source_norm
        if k < ATTRIBUTE_LAGS:
            s = s + vote * p.attr_short * f[f"A{k}"]
    return s


def save_item_model(model: ItemModel, root: str | Path) -> Path:
    """Write ``root/<version>/`` (manifest.json + arrays.npz, no pickle); return the folder."""
    folder = Path(root) / model.version
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "forward_mass": model.forward_mass,
        "backward_mass": model.backward_mass,
        "counts": model.counts,
        "item_category": model.item_category,
    }
    for name in ("forward", "backward", "cooc", "attr_in", "attr_out"):
        m: sp.csr_matrix = getattr(model, name)
        arrays |= {f"{name}.data": m.data, f"{name}.indices": m.indices}
        arrays |= {f"{name}.indptr": m.indptr, f"{name}.shape": np.array(m.shape)}
    np.savez_compressed(folder / "arrays.npz", allow_pickle=False, **arrays)
    meta = {
        "version": model.version,
        "item_ids": model.item_ids,
        "attribute_ids": model.attribute_ids,
        "categories": model.categories,
        "params": asdict(model.params),
        "type_weights": model.type_weights,
        "manifest": model.manifest,
    }
    # The manifest marks the folder complete, so it appears last and at once (a rename).
    partial = folder / "manifest.json.partial"
    partial.write_text(json.dumps(meta))
    partial.replace(folder / "manifest.json")
    return folder


def newest_version(root: Path) -> Path | None:
    """The complete version folder (one with a manifest) under ``root`` that sorts last."""
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    return max(complete, key=lambda p: p.name, default=None)


def load_item_model(path: str | Path) -> ItemModel:
    """Load a model folder, or the newest ``<version>/`` folder under ``path``."""
    folder = Path(path)
    if not (folder / "manifest.json").exists():
        newest = newest_version(folder)
        if newest is None:
            raise FileNotFoundError(f"no item model under {folder}")
        folder = newest
    meta = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def matrix(name: str) -> sp.csr_matrix:
        parts = (arrays[f"{name}.data"], arrays[f"{name}.indices"], arrays[f"{name}.indptr"])
        return sp.csr_matrix(parts, shape=tuple(arrays[f"{name}.shape"]))

    return ItemModel(
        version=meta["version"],
        item_ids=meta["item_ids"],
        attribute_ids=meta["attribute_ids"],
        forward=matrix("forward"),
        backward=matrix("backward"),
        cooc=matrix("cooc"),
        forward_mass=arrays["forward_mass"],
        backward_mass=arrays["backward_mass"],
        attr_in=matrix("attr_in"),
        attr_out=matrix("attr_out"),
        counts=arrays["counts"],
        item_category=arrays["item_category"],
        categories=meta["categories"],
        params=ScorerParams(**meta["params"]),
        type_weights=meta["type_weights"],
        manifest=meta["manifest"],
    )
