"""The item model the service ranks recommendations with: hot-reloaded, indexed for speed."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    disable_created_metrics,
)

from dataflow.model_watch import ModelWatcher
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.schemas import Recommendations, RecommendedItem
from dataflow.serve.store import (
    StoredProfile,
)
from operators.profile import UserItemMemory, memory_from_fields
from operators.recsys import ItemIndex, ItemModel, load_item_model, recommend, update_memory

log = logging.getLogger(__name__)
disable_created_metrics()

#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000


# -- the item model --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    model: ItemModel
    index: ItemIndex | None


def load_served_model(folder: Path) -> ServedModel:
    """A model version, with an ANN index when its catalog is large."""
    model = load_item_model(folder)
    index = ItemIndex.for_model(model) if model.n_items >= ANN_MIN_ITEMS else None
    return ServedModel(model, index)


class ItemModels:
    """The newest item model under a folder, reloaded off the request path.

    A background thread asks the :class:`ModelWatcher` every ``poll_s``; requests read the
    last model loaded, so a new version never makes a request wait for its load."""

    def __init__(self, root: Path, poll_s: float, metrics: ServeMetrics) -> None:
        self._metrics = metrics
        self.watcher: ModelWatcher[ServedModel] = ModelWatcher(
            root,
            poll_s,
            load=load_served_model,
            on_load=self._loaded,
            on_error=lambda _folder, _exc: metrics.item_model_loads.labels("error").inc(),
        )
        self.poll_s = max(poll_s, 0.05)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.served: ServedModel | None = None

    def _loaded(self, folder: Path) -> None:
        self._metrics.item_model_loads.labels("ok").inc()
        self._metrics.item_model.clear()
        self._metrics.item_model.labels(folder.name).set(1)

    def refresh(self) -> ServedModel | None:
        self.served = self.watcher.current()
        return self.served

    def start(self) -> None:
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="serve-item-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def memory_for(model: ItemModel, fields: dict[str, Any]) -> UserItemMemory | None:
    """The user's item memory for ``model``: rebuilt from the recent items when the profile
    was built against another model version (attribute indices differ between versions)."""
    memory = memory_from_fields(fields)
    if memory is None or memory.model_version == model.version:
        return memory
    fresh = UserItemMemory(model.version)
    for item, event_type, ts_ms in memory.recent:
        fresh = update_memory(fresh, model, item, event_type, ts_ms)
    return fresh


def recommend_for(
    served: ServedModel, user_id: str, profile: StoredProfile | None, k: int
) -> Recommendations:
    model = served.model
    fields = profile.fields if profile is not None else {}
    memory = memory_for(model, fields) if profile is not None else None
    seen = {item for item, _, _ in memory.recent} if memory else set()
    ranked = recommend(
        model,
        memory,
        k,
        exclude=seen,
        index=served.index,
        category_affinity=fields.get("category_affinity"),
    )
    cold = memory is None or not any(item in model.index for item in seen)
    return Recommendations(
        user_id,
        model.version,
        None if profile is None else profile.version,
        cold,
        [RecommendedItem(item, score) for item, score in ranked],
    )
