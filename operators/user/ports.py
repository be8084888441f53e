"""What the user machine asks of the world, as interfaces the dataflow (or a test) fills in.

The machine is deterministic given the answers it gets: the text vectors a batch has ready,
the catalog's item vectors, the item model now, and it reports what it did to an observer
instead of calling a metrics library. :class:`NullObserver` is the observer of a test or a
replay that counts nothing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from operators.profile import ItemMemoryModel, UserItemMemory
from operators.recsys import ItemVectors


class TextVectors(Protocol):
    """The shared text batcher: a vector once the text's batch is embedded, else ``None``
    (asking registers the text for the next batch)."""

    def vector(self, text: str, now_ms: int) -> np.ndarray | None: ...

    def due_ms(self, now_ms: int = 0) -> int | None:
        """When the texts asked for should be ready (the open batch is due, or the batch
        in flight done), if any wait; not before ``now_ms`` while one is late."""
        ...


class Catalog(Protocol):
    """The served item vectors, reloaded at any time (``None`` until one is loaded)."""

    def current(self) -> ItemVectors | None: ...


class ItemFeed(Protocol):
    """The item model the profile step folds item events with, learning online."""

    def model(self) -> ItemMemoryModel | None: ...

    def observe(self, memory: UserItemMemory | None, item_id: str | None) -> None: ...


class UserObserver(Protocol):
    """What the machine reports as it goes: the flow turns these into Prometheus metrics."""

    def resumed(self, segments: tuple[str, ...]) -> None:
        """A user came back from a snapshot as a member of ``segments``."""

    def transition(self, segment: str, direction: str) -> None:
        """The user entered or exited a segment."""

    def alert(self, kind: str) -> None:
        """A risk alert went out."""

    def late_event(self) -> None:
        """An event came too late for the windows; the long-term profile took it."""

    def opinion(self, event_type: str, polarity: float) -> None:
        """A text's sentiment was read."""

    def expired(self) -> None:
        """The user was erased for inactivity."""

    def held(self, users: int, state_bytes: int) -> None:
        """The users held and the bytes of their stored state changed by these amounts."""


class NullObserver:
    """An observer that counts nothing: for tests and replays."""

    def resumed(self, segments: tuple[str, ...]) -> None:
        pass

    def transition(self, segment: str, direction: str) -> None:
        pass

    def alert(self, kind: str) -> None:
        pass

    def late_event(self) -> None:
        pass

    def opinion(self, event_type: str, polarity: float) -> None:
        pass

    def expired(self) -> None:
        pass

    def held(self, users: int, state_bytes: int) -> None:
        pass
