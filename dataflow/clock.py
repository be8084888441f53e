"""Event time in the dataflow: markers to every worker, each worker's watermark, timers.

Flink's watermarks travel in the stream, behind the events they cover, and an operator
acts on the minimum over its input channels. Bytewax has no such thing, so the flow builds
it from parts it does have (:mod:`operators.ingest.event_clock` holds the pure ones):

1. Each source partition sends a :class:`~operators.ingest.event_clock.Progress` marker behind its
   batches (:class:`dataflow.sources.EventSource`).
2. The routing step in front of a keyed step gives every marker to **every worker**: one
   copy per worker, under a *clock key* that Bytewax routes to that worker (Bytewax sends
   a key to ``SipHash-1-3(key) % workers``; :func:`clock_keys` finds one key per worker,
   and a clock logic checks on its first marker that it landed where it was meant to).
   Bytewax's channels between two workers keep their order, so a worker that has a
   partition's marker has every event of that partition the marker covers.
3. On each worker the clock key's logic (:class:`ClockLogic`) takes the markers into the
   worker's :class:`~operators.ingest.event_clock.WatermarkTable` for that step, which the other
   keys' logics on the same worker (same thread) read through :class:`StepTime`.
4. Bytewax calls every key's ``on_batch`` in an activation before any ``on_notify``. The
   per-user, per-category and per-item logics therefore read the watermark only in timers (and at
   the end of the input); what ``on_batch`` decides depends on the events alone, so
   nothing they do depends on how markers and events were interleaved in time.
5. Category demand reads the events the profile step accepted (duplicates never count), so
   the profile step's clock forwards a watermark of its own to the demand step: the
   minimum of what it received and the oldest event still waiting for a text vector on
   that worker. The demand step's table waits for every profile worker.

Clock-key tables are Bytewax state like any other: snapshotted each epoch, resumed after
a failure with the sources' positions of the same epoch. Wall time only decides when a
timer looks (:class:`~operators.ingest.event_clock.EventTimeSpeed`) and when a partition is idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Generic, Never, TypeVar

import msgspec
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from operators.ingest import NO_WATERMARK, ChannelState, EventTimeSpeed, Progress, WatermarkTable

log = logging.getLogger(__name__)

#: A wall clock in epoch milliseconds (tests pass their own).
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


_MASK: Final = (1 << 64) - 1
#: Clock keys start with a control character, which no user id or category may contain.
CLOCK_KEY_PREFIX: Final = "\x1fclock/"
#: How often a forwarding clock held back by events waiting for vectors looks again.
_HELD_POLL_MS: Final = 100


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: Rust's ``DefaultHasher``, which Bytewax routes keys by.

    >>> hex(siphash13(b""))
    '0xd1fba762150c532c'
    """
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def round_(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    length = len(data)
    whole = length - length % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = round_(v0, v1, v2, v3)
        v0 ^= m
    m = ((length & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= m
    v0, v1, v2, v3 = round_(v0, v1, v2, v3)
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = round_(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 gives ``key`` in a keyed step (Rust hashes a ``String`` as its
    bytes and a 0xFF byte)."""
    return siphash13(key.encode() + b"\xff") % workers


@lru_cache(maxsize=16)
def clock_keys(workers: int) -> tuple[str, ...]:
    """One clock key per worker: the ``i``-th is routed to worker ``i``.

    >>> [worker_of(key, 3) for key in clock_keys(3)]
    [0, 1, 2]
    """
    keys = []
    for worker in range(workers):
        n = 0
        while worker_of(key := f"{CLOCK_KEY_PREFIX}{worker}/{n}", workers) != worker:
            n += 1
        keys.append(key)
    return tuple(keys)


class Cluster:
    """Which worker the calling thread is and how many there are, as Bytewax tells a
    :class:`ClusterSource` at the start of every run."""

    def __init__(self) -> None:
        self.workers = 0
        self._index: dict[int, int] = {}  # thread id -> worker index
        self._steps: list[StepTime] = []

    @property
    def index(self) -> int:
        return self._index.get(threading.get_ident(), 0)

    def keys(self) -> tuple[str, ...]:
        return clock_keys(self.workers or 1)

    def join(self, index: int, workers: int) -> None:
        """This thread is worker ``index`` of ``workers``, in a run that starts now."""
        self.workers = workers
        self._index[threading.get_ident()] = index
        for step in self._steps:
            step.reset()

    def step(
        self,
        name: str,
        expected: Callable[[], Sequence[str]],
        wall: Callable[[], int],
        timers: Callable[[], EventTimeSpeed],
        lateness_ms: int,
        confirm_idle_ms: int = 0,
    ) -> StepTime:
        """The event time of keyed step ``name``, whose watermark waits for ``expected``
        (the inputs' watermarks trail their newest event times by ``lateness_ms``; an idle
        input in doubt is confirmed by an idle marker ``confirm_idle_ms`` later)."""
        step = StepTime(name, self, expected, wall, timers, lateness_ms, confirm_idle_ms)
        self._steps.append(step)
        return step

    def worker_channels(self) -> list[str]:
        """The channels of a step fed by every worker of the one before."""
        return [f"worker/{i}" for i in range(self.workers or 1)]


class _NothingPartition(StatelessSourcePartition[Never]):
    def next_batch(self) -> list[Never]:
        raise StopIteration


class ClusterSource(DynamicSource[Never]):
    """A source of nothing: building it on each worker tells :class:`Cluster` the worker's
    index and the cluster's size (the only place Bytewax says them)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NothingPartition:
        self._cluster.join(worker_index, worker_count)
        return _NothingPartition()


@dataclass
class WorkerTime:
    """One worker's event time in one keyed step."""

    table: WatermarkTable = field(default_factory=WatermarkTable)
    speed: EventTimeSpeed = field(default_factory=EventTimeSpeed)
    #: The oldest event time each logic still has waiting for a text vector.
    waiting: dict[object, int] = field(default_factory=dict)
    forwarded: Progress | None = None  # the last watermark sent to the next step
    checked: bool = False  # the clock key was found on the worker it was meant for
    input_ended: bool = False  # the input ended (a file read to its end): the run is ending


class StepTime:
    """One keyed step's event time on each worker: per thread, as Bytewax runs a worker.

    By thread id, not ``threading.local``: Bytewax's worker threads are Rust threads, whose
    Python thread state (and its locals) does not outlive one hold of the GIL.
    """

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        expected: Callable[[], Sequence[str]],
        wall: Callable[[], int],
        timers: Callable[[], EventTimeSpeed],
        lateness_ms: int,
        confirm_idle_ms: int,
    ) -> None:
        self.name = name
        self.lateness_ms = lateness_ms
        self.confirm_idle_ms = confirm_idle_ms
        self.cluster = cluster
        self.expected = expected  # the input channels the watermark waits for
        self.wall = wall
        self.timers = timers
        self._times: dict[int, WorkerTime] = {}  # thread id -> that worker's time

    def here(self) -> WorkerTime:
        """This worker's time (a logic keeps it: a logic runs on one worker only)."""
        thread = threading.get_ident()
        time = self._times.get(thread)
        if time is None:
            time = self._times[thread] = WorkerTime(speed=self.timers())
        return time

    def users_waiting(self) -> int:
        """Users of this process with events waiting for a text vector, over its workers."""
        return sum(len(time.waiting) for time in list(self._times.values()))

    def reset(self) -> None:
        """A run starts on this thread: forget what an earlier run of the flow left."""
        self._times[threading.get_ident()] = WorkerTime(speed=self.timers())

    def note(self, time: WorkerTime, markers: list[Progress]) -> bool:
        """Take markers into ``time``'s table; ``True`` if the watermark moved."""
        table, expected, wall = time.table, self.expected(), self.wall()
        moved = False
        for marker in markers:
            moved |= table.note(marker, expected, wall, self.confirm_idle_ms)
        if moved:
            time.speed.note(table.watermark_ms, wall)
            worker = str(self.cluster.index)
            metrics.WATERMARK.labels(self.name, worker).set(table.watermark_ms / 1000)
        return moved

    def wall_due(self, time: WorkerTime, due_event_ms: int) -> datetime:
        """When a timer waiting for the watermark to reach ``due_event_ms`` should look."""
        table = time.table
        reached = table.end_ms() - self.lateness_ms  # what the fastest input has passed
        due = time.speed.wall_due(due_event_ms, table.watermark_ms, reached, self.wall())
        return as_datetime(due)


@lru_cache(maxsize=4096)
def as_datetime(ms: int) -> datetime:
    """Due times repeat for many keys of an activation: build each datetime once."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class ClockLogic(StatefulBatchLogic[Progress, Progress, WatermarkTable]):
    """The logic of a worker's clock key: markers into the worker's table of the step.

    With ``forward`` (the profile step), it also sends the next step the watermark of what
    this worker has emitted: the table's, held back by events still waiting for vectors.
    """

    def __init__(self, step: StepTime, resume: WatermarkTable | None, forward: bool) -> None:
        self.step = step
        self.time = step.here()
        self.forward = forward
        self.dirty = forward  # something to forward
        if resume is not None:
            self.time.table.merge(resume)
            self.time.table.recompute(step.expected())

    def on_batch(self, values: list[Any]) -> tuple[list[Progress], bool]:
        self._check_route(values[0])
        if self.step.note(self.time, values):
            self.dirty = self.forward
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Progress], bool]:
        return self._forwarded(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Progress], bool]:
        return self._forwarded(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.forward:
            return None
        wall = self.step.wall()
        if self.dirty:
            return as_datetime(wall)
        if self._held():
            return as_datetime(wall + _HELD_POLL_MS)
        return None

    def snapshot(self) -> WatermarkTable:
        table = self.time.table
        return msgspec.structs.replace(table, channels=dict(table.channels))

    def _outgoing(self) -> int:
        time = self.time
        return min(
            time.table.watermark_ms, min(time.waiting.values(), default=time.table.watermark_ms)
        )

    def _held(self) -> bool:
        forwarded = self.time.forwarded
        return forwarded is not None and forwarded.watermark_ms < self.time.table.watermark_ms

    def _forwarded(self) -> list[Progress]:
        """The watermark for the next step, if it moved since it was last sent."""
        self.dirty = False
        if not self.forward:
            return []
        time = self.time
        watermark = self._outgoing()
        if watermark == NO_WATERMARK:
            return []
        marker = Progress(
            f"worker/{self.step.cluster.index}", watermark, time.table.end_ms(), ChannelState.ACTIVE
        )
        if marker == time.forwarded:
            return []
        time.forwarded = marker
        return [marker]

    def _check_route(self, first: Any) -> None:
        """A marker must reach the worker its key was chosen for, or that worker's clock
        would never move: fail loudly if Bytewax's routing ever changes."""
        if self.time.checked or not isinstance(first, Routed):
            return
        if first.worker != self.step.cluster.index:
            raise RuntimeError(
                f"step {self.step.name}: the clock key of worker {first.worker} reached worker "
                f"{self.step.cluster.index}: Bytewax no longer routes keys by SipHash-1-3; "
                "event time cannot reach every worker"
            )
        self.time.checked = True


class Routed(Progress, frozen=True, array_like=True, gc=False):
    """A marker addressed to one worker (so the clock can check the routing)."""

    worker: int = 0


def broadcast(progress: Progress, cluster: Cluster) -> list[tuple[str, Progress]]:
    """A copy of ``progress`` for every worker, under its clock key."""
    return [
        (
            key,
            Routed(progress.channel, progress.watermark_ms, progress.newest_ms, progress.state, i),
        )
        for i, key in enumerate(cluster.keys())
    ]


def route(
    items: Iterable[Any], cluster: Cluster, key_of: Callable[[Any], str | None]
) -> list[tuple[str, Any]]:
    """The input of a keyed step: each item under the key ``key_of`` names (``None``: the
    step takes no such item), each marker to every worker under its clock key."""
    routed: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, Progress):
            routed += broadcast(item, cluster)
        elif (key := key_of(item)) is not None:
            routed.append((key, item))
    return routed


In = TypeVar("In")
Out = TypeVar("Out")


class WatermarkDriven(StatefulBatchLogic[In, Out, bytes], Generic[In, Out]):
    """A key whose records wait for the watermark: ``on_batch`` takes them in, and
    :meth:`take` acts on them in timers and at the end of the input, when every record
    older than the watermark has arrived (point 4 above), so what comes out does not
    depend on how the records of many upstream keys interleaved.

    A subclass keeps its state as bytes in snapshots and says when it is next due.
    """

    __slots__ = ("step", "time")

    def __init__(self, step: StepTime) -> None:
        self.step = step
        self.time = step.here()

    def take(self, watermark_ms: int) -> list[Out]:
        """Act on what the watermark has passed."""
        raise NotImplementedError

    def due_ms(self) -> int | None:
        """The event time of the next record to act on (``None``: none)."""
        raise NotImplementedError

    def on_notify(self) -> tuple[list[Out], bool]:
        return self.take(self.time.table.watermark_ms), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Out], bool]:
        return self.take(self.time.table.end_ms()), StatefulBatchLogic.RETAIN  # all is in

    def notify_at(self) -> datetime | None:
        due = self.due_ms()
        return None if due is None else self.step.wall_due(self.time, due)


class Unborn(StatefulBatchLogic[Any, Any, Any]):
    """A new key's logic, decided by its first item: a clock key (markers) gets the worker's
    clock, any other key the step's own logic, to which every call then goes."""

    __slots__ = ("inner", "make")

    def __init__(self, make: Callable[[Any], StatefulBatchLogic[Any, Any, Any]]) -> None:
        self.make: Callable[[Any], StatefulBatchLogic[Any, Any, Any]] | None = make
        self.inner: StatefulBatchLogic[Any, Any, Any] | None = None

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        inner = self.inner
        if inner is None:
            assert self.make is not None
            inner = self.inner = self.make(values[0])
            # Bytewax keeps this wrapper for the key's life: drop the factory (and the
            # closures it holds, ~0.6 KB a key) once it has made the logic.
            self.make = None
        return inner.on_batch(values)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        assert self.inner is not None
        return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        assert self.inner is not None
        return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return None if self.inner is None else self.inner.notify_at()

    def snapshot(self) -> Any:
        assert self.inner is not None
        return self.inner.snapshot()


def keyed_logic(
    step: StepTime,
    resume: Any,
    own: Callable[[Any], StatefulBatchLogic[Any, Any, Any]],
    forward: bool,
) -> StatefulBatchLogic[Any, Any, Any]:
    """The logic of a key of a keyed step: the worker's clock or the step's own (``own``)."""
    if isinstance(resume, WatermarkTable):
        return ClockLogic(step, resume, forward)
    if resume is not None:
        return own(resume)
    return Unborn(
        lambda first: ClockLogic(step, None, forward) if isinstance(first, Progress) else own(None)
    )
