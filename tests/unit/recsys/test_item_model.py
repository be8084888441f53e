"""The item model: training, the online memory step, and the saved artefact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from operators.profile import UserItemMemory, memory_fields, memory_from_fields
from operators.recsys import (
    LONG_TERM_ATTRS,
    RECENT_ITEMS,
    ItemInteraction,
    ItemModel,
    ScorerParams,
    load_item_model,
    save_item_model,
    score_users,
    train_item_model,
    update_memory,
)


def chain_sequences(n_users: int = 60, n_items: int = 30, seed: int = 0) -> list[list[str]]:
    """Users walk a chain i -> i+1, starting anywhere: the next item is predictable."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start = int(rng.integers(0, n_items - 6))
        out.append([f"i{start + k}" for k in range(int(rng.integers(3, 7)))])
    return out


DRAFT = ScorerParams()


def toy_model(params: ScorerParams | None = DRAFT) -> ItemModel:
    seqs = [[ItemInteraction(i) for i in s] for s in chain_sequences()]
    attrs = {f"i{k}": [f"group{k // 5}", "shop"] for k in range(30)}
    return train_item_model(seqs, attrs, params=params, version="v1")


def test_transitions_predict_the_next_item_of_the_chain() -> None:
    model = toy_model()
    memory = None
    for item in ("i3", "i4", "i5"):
        memory = update_memory(memory, model, item, "purchase", 0)
    scores = score_users(model, [memory])[0]
    assert model.item_ids[int(np.argmax(scores))] in {"i6"}


def test_learned_params_rank_the_validation_targets_well() -> None:
    model = toy_model(params=None)
    hits = 0
    for s in chain_sequences(seed=1)[:20]:
        memory = None
        for item in s[:-1]:
            memory = update_memory(memory, model, item, "purchase", 0)
        scores = score_users(model, [memory])[0]
        hits += model.index[s[-1]] in np.argsort(-scores)[:3]
    assert hits >= 18


def test_sgd_step_is_the_exact_weighted_mean_and_lowers_its_loss() -> None:
    model = toy_model()
    stream = [("i1", "purchase", 1.0), ("i9", "purchase", 1.0), ("i22", "view", 0.5)]
    model = ItemModel(**{**_fields(model), "type_weights": {"purchase": 1.0, "view": 0.5}})
    dense = model.attr_in.toarray()

    def loss(u: np.ndarray, upto: int) -> float:
        seen = stream[:upto]
        return sum(w * float(((u - dense[model.index[i]]) ** 2).sum()) for i, _, w in seen)

    memory, previous = None, np.zeros(dense.shape[1])
    for t, (item, event_type, _) in enumerate(stream, start=1):
        memory = update_memory(memory, model, item, event_type, t)
        u = np.zeros(dense.shape[1])
        for a, w in memory.long_term_vector().items():
            u[a] = w
        assert loss(u, t) <= loss(previous, t) + 1e-9
        previous = u
    weights = np.array([w for _, _, w in stream])
    mean = (weights[:, None] * dense[[model.index[i] for i, _, _ in stream]]).sum(0) / weights.sum()
    np.testing.assert_allclose(previous, mean, atol=1e-9)


def _fields(model: ItemModel) -> dict:
    return {k: getattr(model, k) for k, f in model.__dataclass_fields__.items() if f.init}


def test_memory_is_bounded_json_and_ignores_zero_weight_events() -> None:
    model = toy_model()
    model = ItemModel(**{**_fields(model), "type_weights": {"purchase": 1.0, "refund": 0.0}})
    memory = None
    for t in range(50):
        memory = update_memory(memory, model, f"i{t % 30}", "purchase", t)
    assert memory is not None
    assert len(memory.recent) == RECENT_ITEMS and len(memory.long_term) <= LONG_TERM_ATTRS
    assert update_memory(memory, model, "i3", "refund", 99) == memory
    restored = memory_from_fields(json.loads(json.dumps(memory_fields(memory))))
    assert restored is not None and restored.recent == memory.recent
    assert restored.seen == memory.seen == 50
    np.testing.assert_allclose(
        score_users(model, [restored]), score_users(model, [memory]), rtol=1e-5
    )


def test_memory_from_another_model_version_is_rebuilt() -> None:
    model = toy_model()
    old = UserItemMemory("v0", [("i3", "purchase", 0)], {999: 1.0}, 1.0)
    memory = update_memory(old, model, "i4", "purchase", 1)
    assert memory.model_version == "v1" and max(memory.long_term) < len(model.attribute_ids)


def test_artefact_round_trip_and_newest_version(tmp_path) -> None:
    model = toy_model()
    folder = save_item_model(model, tmp_path)
    assert folder == tmp_path / "v1" and (folder / "manifest.json").exists()
    newer = ItemModel(**{**_fields(model), "version": "v2"})
    save_item_model(newer, tmp_path)
    loaded = load_item_model(tmp_path)
    assert loaded.version == "v2"
    loaded = load_item_model(folder)
    assert loaded.item_ids == model.item_ids and loaded.params == model.params
    assert loaded.type_weights == model.type_weights
    memory = update_memory(None, model, "i3", "purchase", 0)
    np.testing.assert_array_equal(score_users(loaded, [memory]), score_users(model, [memory]))


def test_training_records_its_data_range() -> None:
    seqs = [[ItemInteraction("a", ts_ms=5), ItemInteraction("b", "view", ts_ms=9)]]
    model = train_item_model(seqs, params=ScorerParams(), type_weights={"purchase": 4.0})
    assert model.manifest["n_events"] == 2 and model.manifest["first_ts_ms"] == 5
    assert model.manifest["last_ts_ms"] == 9
    assert model.type_weights == pytest.approx({"purchase": 1.0, "view": 0.25})
