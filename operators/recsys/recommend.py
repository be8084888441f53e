"""Top-K recommendations from an :class:`~operators.recsys.ItemModel` and a user's memory.

``recommend`` ranks every item exactly for small catalogs; with an :class:`ItemIndex` it only
re-scores the candidates an approximate inner-product search (faiss HNSW) proposes for the
attribute-space part of the score, plus the sparse neighbours of the user's recent items, so
its cost does not grow with the catalog. Users without usable history fall back to popularity
within the categories they like, or to global popularity. :class:`TypeWeightLearner` adapts
how much each event type counts, to what predicts users' next items.

>>> from operators.recsys import ItemInteraction, ScorerParams, train_item_model
>>> from operators.recsys import update_memory
>>> seqs = [[ItemInteraction(i) for i in s] for s in (["a", "b", "c"], ["a", "b", "d"])] * 3
>>> model = train_item_model(seqs, params=ScorerParams())
>>> memory = update_memory(None, model, "a", "purchase", 0)
>>> [item for item, _ in recommend(model, memory, k=2, exclude={"a"})]
['b', 'c']
>>> [item for item, _ in recommend(model, None, k=1)]
['a']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import faiss
import numpy as np
from scipy.sparse.linalg import svds

from operators.profile import UserItemMemory
from operators.recsys.item_model import ItemModel, score_users, user_queries

__all__ = [
    "ItemIndex",
    "TypeWeightLearner",
    "cold_start_scores",
    "is_cold",
    "recommend",
    "score_items",
    "score_users",
    "type_evidence",
]


def cold_start_scores(
    model: ItemModel, category_affinity: Mapping[str, float] | None = None
) -> np.ndarray:
    """Popularity within the user's categories (weighted by affinity), else global popularity.

    Each category's items share its affinity in proportion to their popularity; global
    popularity, scaled far below, orders the rest."""
    popularity = np.log1p(model.counts)
    scores = 1e-6 * popularity / max(float(popularity.max(initial=0.0)), 1.0)
    cat_index = {c: k for k, c in enumerate(model.categories)}
    for category, affinity in (category_affinity or {}).items():
        k = cat_index.get(category)
        if k is None or affinity <= 0:
            continue
        members = model.item_category == k
        scores[members] += affinity * model.counts[members] / max(model.counts[members].sum(), 1)
    return scores.astype(np.float32)


def is_cold(model: ItemModel, memory: UserItemMemory | None) -> bool:
    """Whether the user has no recent item this model knows (so popularity must serve)."""
    return memory is None or not any(item in model.index for item, _, _ in memory.recent)


def score_items(
    model: ItemModel,
    memory: UserItemMemory | None,
    category_affinity: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Scores of every item for one user (cold start when the memory knows no item)."""
    if is_cold(model, memory):
        return cold_start_scores(model, category_affinity)
    return score_users(model, [memory])[0]


class ItemIndex:
    """Approximate maximum inner product search over item vectors (faiss HNSW).

    :meth:`for_model` indexes the attribute-space part of the score: item ``j``'s vector is
    column ``j`` of ``attr_out``, projected on its top singular directions when there are
    more attributes than ``dim``; a query is projected the same way."""

    def __init__(
        self,
        vectors: np.ndarray,
        projection: np.ndarray | None = None,
        neighbours: int = 32,
        ef_search: int = 128,
    ) -> None:
        self.projection = projection
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexHNSWFlat(
            self.vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT
        )
        self.index.hnsw.efConstruction = 2 * ef_search
        self.index.hnsw.efSearch = ef_search
        self.index.add(self.vectors)

    @classmethod
    def for_model(cls, model: ItemModel, dim: int = 64) -> ItemIndex:
        attr_out = model.attr_out.astype(np.float64)
        if attr_out.shape[0] <= dim:
            return cls(attr_out.T.toarray())
        u, s, vt = svds(attr_out, k=dim)
        return cls((vt.T * s).astype(np.float32), projection=u.astype(np.float32))

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Indices of (about) the k items with the largest inner product with ``query``."""
        q = query @ self.projection if self.projection is not None else query
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
        _, found = self.index.search(np.asarray(q, np.float32).reshape(1, -1), k)
        return found[0][found[0] >= 0]


def recommend(
    model: ItemModel,
    memory: UserItemMemory | None,
    k: int,
    exclude: set[str] | None = None,
    index: ItemIndex | None = None,
    category_affinity: Mapping[str, float] | None = None,
    candidates: int = 500,
) -> list[tuple[str, float]]:
    """The top-``k`` (item id, score) for a user, best first, skipping ``exclude``."""
    banned = np.array([model.index[i] for i in exclude or () if i in model.index], np.int64)
    if index is None or is_cold(model, memory):
        scores = score_items(model, memory, category_affinity)
        pool = np.arange(model.n_items)
    else:
        pool, scores = _candidate_scores(model, memory, index, k + len(banned) + candidates)
    keep = ~np.isin(pool, banned)
    pool, scores = pool[keep], scores[keep]
    top = np.argsort(-scores, kind="stable")[:k] if len(pool) > k else np.argsort(-scores)
    return [(model.item_ids[pool[t]], float(scores[t])) for t in top]


def _candidate_scores(
    model: ItemModel, memory: UserItemMemory | None, index: ItemIndex, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the ANN candidates, the recent items' neighbours and popular items."""
    item_space, attr_space = user_queries(model, [memory])
    query = attr_space.toarray()[0]
    popular = np.argsort(-model.counts)[: n if model.params.popularity > 0 else 0]
    pool = np.unique(
        np.concatenate([index.search(query, n), item_space.indices, popular]).astype(np.int64)
    )
    attr_part = attr_space @ model.attr_out[:, pool]
    prior = model.params.popularity * np.log1p(model.counts[pool])
    scores = item_space[:, pool].toarray()[0] + attr_part.toarray()[0] + prior
    return pool, scores.astype(np.float32)


def type_evidence(model: ItemModel, memory: UserItemMemory, item_id: str) -> dict[str, float]:
    """For each event type in the memory, how highly that type's recent items alone rank
    ``item_id``: its percentile among all items (1 = top, 0.5 = no information)."""
    item = model.index.get(item_id)
    if item is None:
        return {}
    short_term = replace(model.params, attr_long=0.0)
    evidence = {}
    for event_type in {t for _, t, _ in memory.recent}:
        only = [r for r in memory.recent if r[1] == event_type]
        scores = score_users(model, [UserItemMemory(memory.model_version, only)], short_term)[0]
        below = float((scores < scores[item]).sum())
        ties = float((scores == scores[item]).sum()) - 1
        evidence[event_type] = (below + 0.5 * ties) / max(model.n_items - 1, 1)
    return evidence


@dataclass
class TypeWeightLearner:
    """Multiplicative (exponentiated-gradient) weights of event types.

    A type whose events rank the user's next item better than the average type gains weight,
    ``w_t *= exp(rate * (e_t - mean e))``; weights stay within ``bounds`` and are rescaled so
    the largest is 1, so they can be used as ``ItemModel.type_weights`` directly."""

    weights: dict[str, float] = field(default_factory=dict)
    rate: float = 0.1
    bounds: tuple[float, float] = (0.01, 1.0)
    updates: int = 0

    def learn_one(self, evidence: Mapping[str, float]) -> dict[str, float]:
        if len(evidence) < 2:  # one type alone carries no comparison
            return self.weights
        mean = sum(evidence.values()) / len(evidence)
        for event_type, e in evidence.items():
            w = self.weights.get(event_type, 1.0) * math.exp(self.rate * (e - mean))
            self.weights[event_type] = w
        top = max(self.weights.values())
        low, high = self.bounds
        self.weights = {t: min(max(w / top, low), high) for t, w in self.weights.items()}
        self.updates += 1
        return self.weights
