"""The user machine: one user's whole step, from events and clocks to deltas and alerts.

The profile core (:mod:`operators.profile`) folds an event into a profile; the applications
(:mod:`operators.apps`) react to it. :class:`UserMachine` is the step that runs them for one
user, in order and deterministically: waiting for text vectors, de-duplication and its dead
letters, the profile update, segments, risk, timers at event time (segment checks, expiry),
erasure, and coalescing changes into deltas. It talks to the world through the interfaces
in :mod:`operators.user.ports` -- text vectors, the catalog, the item model, an observer for
metrics -- so the stream processor only adapts it, and tests and replays run it as it is.
"""

from operators.user.machine import (
    Due,
    MachineSettings,
    Ports,
    UserMachine,
    UserOutput,
    UserSnapshot,
    resumed,
    vector_of,
)
from operators.user.ports import (
    Catalog,
    ItemFeed,
    NullObserver,
    TextVectors,
    UserObserver,
)

__all__ = [
    "Catalog",
    "Due",
    "ItemFeed",
    "MachineSettings",
    "NullObserver",
    "Ports",
    "TextVectors",
    "UserMachine",
    "UserObserver",
    "UserOutput",
    "UserSnapshot",
    "resumed",
    "vector_of",
]
