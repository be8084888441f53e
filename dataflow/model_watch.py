"""Pick up newer model versions from a watched folder while the flow runs (hot reload).

``profilestream train --out ROOT`` writes each model into its own version folder,
``ROOT/<version>/``, and writes ``manifest.json`` last (by an atomic rename), so a folder
with a manifest is complete. :class:`ModelWatcher` checks ``ROOT`` at most every
``poll_interval_s`` seconds and loads the newest complete version (version names sort by
time); the profile step asks it for the current model on every event, which costs a clock
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
from pathlib import Path
from typing import Generic, TypeVar

Model = TypeVar("Model")
log = logging.getLogger(__name__)


def newest_version(root: Path) -> Path | None:
    """The complete version folder of ``root`` whose name sorts last, if any."""
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    return max(complete, key=lambda p: p.name, default=None)


class ModelWatcher(Generic[Model]):
    """The newest model under a folder, reloaded when a newer version appears.

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
        self._failed: set[Path] = set()
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
        folder = newest_version(self.root)
        if folder is None or folder == self._folder or folder in self._failed:
            return
        try:
            model = self._load(folder)
        except Exception as exc:  # a broken artefact must not stop the stream
            self._failed.add(folder)
            log.exception("model version %s failed to load; keeping %s", folder, self._folder)
            self._on_error(folder, exc)
            return
        self._model, self._folder = model, folder
        log.info("serving model version %s", folder.name)
        self._on_load(folder)
