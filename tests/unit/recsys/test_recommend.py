"""Recommendations: exact and ANN ranking, exclusion, cold start, and event-type weights."""

from __future__ import annotations

import numpy as np

from operators.recsys import (
    ItemIndex,
    ItemInteraction,
    ItemModel,
    ScorerParams,
    TypeWeightLearner,
    cold_start_scores,
    recommend,
    score_items,
    train_item_model,
    type_evidence,
    update_memory,
)


def test_ann_agrees_with_exact_top_k_on_a_random_catalog() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(20_000, 32)).astype(np.float32)
    index = ItemIndex(items)
    k, recall = 20, []
    for query in rng.normal(size=(50, 32)).astype(np.float32):
        exact = set(np.argsort(-(items @ query))[:k].tolist())
        recall.append(len(exact & set(index.search(query, k).tolist())) / k)
    assert np.mean(recall) >= 0.95


def shop_model() -> ItemModel:
    rng = np.random.default_rng(1)
    seqs = []
    for _ in range(200):
        start = int(rng.integers(0, 90))
        items = range(start, start + 5)
        seqs.append([ItemInteraction(f"i{i}", category=f"c{i // 10}") for i in items])
    attrs = {f"i{k}": [f"brand{k % 7}"] for k in range(100)}
    return train_item_model(seqs, attrs, params=ScorerParams())


def test_index_recommendations_match_exact_ones() -> None:
    model = shop_model()
    index = ItemIndex.for_model(model, dim=4)
    memory = None
    for item in ("i40", "i41", "i42"):
        memory = update_memory(memory, model, item, "purchase", 0)
    exact = [i for i, _ in recommend(model, memory, k=5)]
    approx = [i for i, _ in recommend(model, memory, k=5, index=index)]
    assert exact[0] == "i43" and len(set(exact) & set(approx)) >= 4


def test_excluded_items_are_never_recommended() -> None:
    model = shop_model()
    memory = update_memory(None, model, "i40", "purchase", 0)
    top = [i for i, _ in recommend(model, memory, k=3)]
    kept = [i for i, _ in recommend(model, memory, k=3, exclude={top[0], "i40", "unknown"})]
    assert top[0] not in kept and "i40" not in kept and kept[0] == top[1]


def test_cold_start_uses_category_popularity_then_global_popularity() -> None:
    model = shop_model()
    top = recommend(model, None, k=3, category_affinity={"c2": 1.0})
    assert all(model.categories[model.item_category[model.index[i]]] == "c2" for i, _ in top)
    unknown_only = update_memory(None, model, "never-seen", "purchase", 0)
    assert np.array_equal(score_items(model, unknown_only), cold_start_scores(model))
    assert recommend(model, None, k=1)[0][0] == model.item_ids[int(np.argmax(model.counts))]


def test_type_weights_move_toward_the_type_that_predicts_the_next_item() -> None:
    """Purchases walk a chain (the next purchase is predictable), views are random."""
    rng = np.random.default_rng(2)

    def stream() -> list[ItemInteraction]:
        start = int(rng.integers(0, 40))
        out = []
        for k in range(6):
            out.append(ItemInteraction(f"i{start + k}", "purchase"))
            out.append(ItemInteraction(f"i{int(rng.integers(0, 50))}", "view"))
        return out

    model = train_item_model([stream() for _ in range(300)], params=ScorerParams())
    learner = TypeWeightLearner({"purchase": 1.0, "view": 1.0})
    for events in (stream() for _ in range(40)):
        memory = None
        for e in events:
            if memory is not None:
                learner.learn_one(type_evidence(model, memory, e.item_id))
            memory = update_memory(memory, model, e.item_id, e.type, e.ts_ms)
    assert learner.weights["purchase"] == 1.0 and learner.weights["view"] < 0.8
