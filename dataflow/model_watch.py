"""Pick up newer model versions from a watched folder, or an edited file, while the flow runs.

``profilestream train --out ROOT`` writes each model into its own version folder,
``ROOT/<version>/``, and writes ``manifest.json`` last (by an atomic rename), so a folder
with a manifest is complete. :class:`ModelWatcher` checks ``ROOT`` at most every
``poll_interval_s`` seconds and loads the newest complete version (version names sort by
time). A watched *file* (segment definitions) is loaded again when its modification time
changes. The profile step asks it for the current model on every event, which costs a clock
read between checks. A version that fails to load is logged, counted and skipped: the flow
keeps serving the model it has.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> watcher = ModelWatcher(root, 0.0, load=lambda folder: folder.name)
>>> watcher.current() is None
True
>>> (root / "v2" ).mkdir(); (root / "v2" / "manifest.json").write_text("{}")
2
>>> watcher.current()
'v2'
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Generic, TypeVar

from operators.profile import UserItemMemory
from operators.recsys import ItemModel, TypeWeightLearner, newest_version, type_evidence

Model = TypeVar("Model")
log = logging.getLogger(__name__)


class ModelWatcher(Generic[Model]):
    """The newest model under a folder, reloaded when a newer version appears; or, when
    ``root`` is a file, that file, reloaded when it changes.

    Worker threads of one process share a watcher; loading happens under a lock, once.
    ``on_load(version_folder)`` and ``on_error(version_folder, exc)`` feed metrics.
    """

    def __init__(
        self,
        root: Path,
        poll_interval_s: float,
        *,
        load: Callable[[Path], Model],
        clock: Callable[[], float] = time.monotonic,
        on_load: Callable[[Path], None] = lambda _folder: None,
        on_error: Callable[[Path, Exception], None] = lambda _folder, _exc: None,
    ) -> None:
        self.root = root
        self.poll_interval_s = poll_interval_s
        self._load = load
        self._clock = clock
        self._on_load = on_load
        self._on_error = on_error
        self._lock = threading.Lock()
        self._model: Model | None = None
        self._folder: Path | None = None
        self._seen: tuple[Path, int] | None = None  # what was loaded: path, file mtime
        self._failed: set[tuple[Path, int]] = set()
        self._next_check = float("-inf")

    def current(self) -> Model | None:
        """The model to use now; checks the folder when the poll interval has passed."""
        if self._clock() < self._next_check:
            return self._model
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self.poll_interval_s
                self._refresh()
        return self._model

    def _refresh(self) -> None:
        if self.root.is_file():
            folder: Path | None = self.root
            stamp = self.root.stat().st_mtime_ns
        else:
            folder, stamp = newest_version(self.root), 0
        if folder is None or (folder, stamp) == self._seen or (folder, stamp) in self._failed:
            return
        try:
            model = self._load(folder)
        except Exception as exc:  # a broken artefact must not stop the stream
            self._failed.add((folder, stamp))
            log.exception("model version %s failed to load; keeping %s", folder, self._folder)
            self._on_error(folder, exc)
            return
        self._model, self._folder, self._seen = model, folder, (folder, stamp)
        log.info("serving model version %s", folder.name)
        self._on_load(folder)


class ItemModelFeed:
    """The item model the profile step uses: the newest version, type weights learned online.

    Before an item event updates a user's memory, :meth:`observe` asks, for each event type
    in the memory, how well that type's recent items alone ranked the item the user chose
    (:func:`operators.recsys.recommend.type_evidence`), and the :class:`TypeWeightLearner` moves
    weight towards the types that predict. Every ``publish_every`` lessons the served model
    takes the learned weights; a new model version restarts from its offline weights.
    A lesson scores the catalogue once per event type (7.5 ms on the demo's 2,000 items; it
    took half the flow's time at one lesson in 10 and a tenth of it at one in 100), so only
    every ``sample_every``-th eligible event is a lesson: at tens of thousands of events a
    second that is still dozens of lessons.
    """

    def __init__(
        self,
        watcher: ModelWatcher[ItemModel],
        *,
        rate: float = 0.05,
        sample_every: int = 1_000,
        publish_every: int = 20,
        on_weights: Callable[[dict[str, float]], None] = lambda _weights: None,
    ) -> None:
        self.watcher = watcher
        self.rate = rate
        self.sample_every = sample_every
        self.publish_every = publish_every
        self._on_weights = on_weights
        self._lock = threading.Lock()
        self._base: ItemModel | None = None
        self._served: ItemModel | None = None
        self._learner = TypeWeightLearner()
        self._eligible = 0
        self._lessons = 0

    def model(self) -> ItemModel | None:
        base = self.watcher.current()
        if base is not self._base:
            with self._lock:
                self._base = self._served = base
                weights = dict(base.type_weights) if base is not None else {}
                self._learner = TypeWeightLearner(weights, rate=self.rate)
            self._on_weights(weights)
        return self._served

    def observe(self, memory: UserItemMemory | None, item_id: str | None) -> None:
        """Learn from the item a user is about to interact with, given their memory so far."""
        served = self._served
        if served is None or memory is None or item_id is None:
            return
        if memory.model_version != served.version or len({t for _, t, _ in memory.recent}) < 2:
            return
        with self._lock:
            self._eligible += 1
            if self._eligible % self.sample_every:
                return
            self._learner.learn_one(type_evidence(served, memory, item_id))
            self._lessons += 1
            if self._lessons % self.publish_every == 0 and self._base is not None:
                weights = dict(self._learner.weights)
                self._served = replace(self._base, type_weights=weights)
                self._on_weights(weights)
