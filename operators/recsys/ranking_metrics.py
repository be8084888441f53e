"""Score next-item predictions: the rank of the held-out item, HR@K and NDCG@K.

The protocol of the published sequential-recommendation tables (S3-Rec, ICLRec): rank the
target against *all* items, with the items the user has already interacted with masked,
and average over users ``HR@K = [rank < K]`` and ``NDCG@K = [rank < K] / log2(rank + 2)``
(one relevant item, so the ideal DCG is 1). Ranks are 0-based and pessimistic: items that
tie with the target count as ahead of it, so a model cannot gain from constant scores.

>>> scores = np.array([[0.1, 0.9, 0.5, 0.7]])
>>> target_ranks(scores, np.array([2]), [np.array([1])]).tolist()  # item 1 masked
[1]
>>> hit_rate_and_ndcg(np.array([0, 1, 30]), ks=(1, 5))
{'HR@1': 0.3333, 'NDCG@1': 0.3333, 'HR@5': 0.6667, 'NDCG@5': 0.5436}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (5, 10, 20)


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, masked: Sequence[np.ndarray]
) -> np.ndarray:
    """0-based rank of each row's target among the unmasked items of that row.

    ``scores`` is ``(users, items)``; ``masked[i]`` holds the item indices user ``i`` has
    already seen (the target itself is never masked, even if seen before).
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    for row, items in enumerate(masked):
        scores[row, items] = -np.inf
    scores[rows, targets] = -np.inf  # the target does not rank against itself
    return (scores >= target_scores[:, None]).sum(axis=1)


def hit_rate_and_ndcg(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K and NDCG@K over users for each K, rounded to 4 decimals."""
    ranks = np.asarray(ranks)
    metrics: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        metrics[f"HR@{k}"] = round(float(hit.mean()), 4) if len(ranks) else 0.0
        gain = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        metrics[f"NDCG@{k}"] = round(float(gain.mean()), 4) if len(ranks) else 0.0
    return metrics
