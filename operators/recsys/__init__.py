"""Recommendation: an item model trained offline on event sequences, catalog vectors, and
the ranking a user's item memory and interest vector give.

:func:`train_item_model` learns sparse item-to-item statistics and a scorer from users'
sequences (:class:`ItemModel`, hot-reloaded by the flow, which folds each user's events into
the memory the profile keeps); :func:`recommend` ranks items for one user, cold users by
their interest vector against :class:`ItemVectors` (the catalog embedded with the flow's
model); :func:`hit_rate_and_ndcg` scores rankings as the published benchmarks do.
"""

from operators.recsys.item_model import (
    LONG_TERM_ATTRS,
    RECENT_ITEMS,
    ItemInteraction,
    ItemModel,
    ScorerParams,
    load_item_model,
    newest_version,
    save_item_model,
    score_users,
    train_item_model,
    update_memory,
    user_queries,
)
from operators.recsys.item_vectors import (
    CatalogEntry,
    ItemVectors,
    embed_catalog,
    load_item_vectors,
    loader_for,
    read_catalog,
    save_item_vectors,
)
from operators.recsys.ranking_metrics import DEFAULT_KS, hit_rate_and_ndcg, target_ranks
from operators.recsys.recommend import (
    ItemIndex,
    TypeWeightLearner,
    cold_start_scores,
    is_cold,
    recommend,
    score_items,
    type_evidence,
)

__all__ = [
    "DEFAULT_KS",
    "LONG_TERM_ATTRS",
    "RECENT_ITEMS",
    "CatalogEntry",
    "ItemIndex",
    "ItemInteraction",
    "ItemModel",
    "ItemVectors",
    "ScorerParams",
    "TypeWeightLearner",
    "cold_start_scores",
    "embed_catalog",
    "hit_rate_and_ndcg",
    "is_cold",
    "load_item_model",
    "load_item_vectors",
    "loader_for",
    "newest_version",
    "read_catalog",
    "recommend",
    "save_item_model",
    "save_item_vectors",
    "score_items",
    "score_users",
    "target_ranks",
    "train_item_model",
    "type_evidence",
    "update_memory",
    "user_queries",
]
