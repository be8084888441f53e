"""The stream's event-time clock: how far the input has got, and when it will get further.

Some outputs depend on time passing, not on a user acting: a user lapses 30 days after
their last purchase, a category's hour closes after its last event. In event time, "now" is
how far the stream has got; a quiet user or category learns the time from everybody else's
events. :class:`EventClock` keeps that (per process, shared by its worker threads) and
translates a due event time into the wall-clock time to check again, which is what
Bytewax's timers (``notify_at``) take.

"How far the stream has got" is the newest event time of the *slowest* input partition,
as Flink's watermarks are: while a backlog is read, one Kafka partition may be hours ahead
of another, and a clock that followed the fastest would close a category's hour before the
slower partition's events for it arrived. A batch counts ``settle_ms`` after it was read
(its events may still be travelling to their users' workers or waiting for an embedding).
A partition that has sent nothing for ``idle_ms`` of wall time stops holding the clock back
(an idle partition would stop it), and
the clock stays at 0 for the first ``idle_ms`` after the first event, so every partition
that has data gets to report before the clock moves (it never moves back). At the end of
the input, :meth:`newest_ms` is how far every partition got.

The translation measures how fast event time runs against the wall clock: about 1x for a
live stream, thousands of times faster for a replay of a year-old log. It never assumes
slower than 1x, so a live stream's timer fires no later than the event time falls due; it
waits at least ``min_wait_ms``, so timers cannot spin, and at most ``max_wait_ms`` (10
minutes), so a timer set before a replay's speed was known is not stuck for hours. A timer
that fires early finds the clock short of its due time and sets itself again (a million
users with timers cost under two thousand such wake-ups a second).

An event time more than ``max_ahead_ms`` beyond the time it was ingested (a producer's
broken clock) does not move the clock: otherwise one bad timestamp would lapse everyone.

>>> wall = [0]
>>> clock = EventClock(wall_clock=lambda: wall[0], idle_ms=10_000, settle_ms=2_000)
>>> clock.observe([(1_000_000, 1_000_000), (99_000_000_000, 1_000_000)])  # one from a bad clock
>>> clock.observe([(4_600_000, 4_600_000)], partition="p1")
>>> clock.now_ms()  # the first 10 s after the first event: partitions report in
0
>>> wall[0] = 10_000
>>> clock.observe([(5_000_000, 0)]); clock.observe([(4_700_000, 0)], partition="p1")
>>> clock.now_ms()  # the slowest partition's settled batches (the new ones are in flight)
1000000
>>> wall[0] = 12_000; clock.now_ms()  # the batches read at 10 s have settled
4700000
>>> wall[0] = 30_000; clock.now_ms(), clock.newest_ms()  # both idle: all they read counts
(5000000, 5000000)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

#: How far ahead of its ingest time an event time may be and still move the clock.
MAX_AHEAD_MS: Final = 3_600_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Partition:
    """What the clock knows of one input partition."""

    done: int = 0  # newest event time of the batches that have settled
    read: int = 0  # newest event time read
    seen: int = 0  # wall time of the latest batch
    in_flight: deque[tuple[int, int]] = field(default_factory=deque)  # (wall read, newest)


class EventClock:
    """The newest trusted event time of the stream, and a wall-clock estimate of the future."""

    def __init__(
        self,
        *,
        wall_clock: Callable[[], int] = _wall_ms,
        max_ahead_ms: int = MAX_AHEAD_MS,
        min_wait_ms: int = 1_000,
        max_wait_ms: int = 600_000,
        idle_ms: int = 10_000,
        settle_ms: int = 2_000,
    ) -> None:
        self._wall = wall_clock
        self.max_ahead_ms = max_ahead_ms
        self.min_wait_ms = min_wait_ms
        self.max_wait_ms = max_wait_ms
        self.idle_ms = idle_ms
        self.settle_ms = settle_ms
        self._now = 0
        self._partitions: dict[str, _Partition] = {}
        self._first_wall: int | None = None  # when the first event arrived
        self._lock = threading.Lock()
        self._mark: tuple[int, int] | None = None  # (wall, event) where the rate was last read
        self._rate: float | None = None  # event ms per wall ms (at least 1); None: not yet known

    def observe(self, times: Iterable[tuple[int, int]], partition: str = "") -> None:
        """Note a batch read from ``partition``: ``(event time, ingest time)`` pairs (ingest
        0 if unknown).

        The clock counts a batch only ``settle_ms`` of wall time after it was read (or once
        its partition has been idle for ``idle_ms``): until then its events may still be on
        their way to the users and categories they concern, and a clock that already
        counted them could fire those users' timers before their older events arrive.
        """
        ahead = self.max_ahead_ms
        newest = max((t for t, ingest in times if not ingest or t <= ingest + ahead), default=0)
        wall = self._wall()
        with self._lock:
            state = self._partitions.get(partition)
            if state is None:
                state = self._partitions[partition] = _Partition()
            state.read = max(state.read, newest)
            state.seen = wall
            if newest:
                state.in_flight.append((wall, newest))
            self._advance(wall)

    def now_ms(self) -> int:
        """How far the slowest live partition has got (0 before the first event)."""
        if self._partitions:
            wall = self._wall()
            with self._lock:
                self._advance(wall)
        return self._now

    def newest_ms(self) -> int:
        """The newest event time of any partition: the clock once the input has ended."""
        with self._lock:
            return max((p.read for p in self._partitions.values()), default=0)

    def _advance(self, wall: int) -> None:
        """Move the clock to the slowest partition that is not idle (under the lock); it
        never goes back."""
        if self._first_wall is None:
            self._first_wall = wall
        if wall - self._first_wall < self.idle_ms:
            return  # partitions that have data are still reporting in
        live, idle = [], []
        for state in self._partitions.values():
            if wall - state.seen > self.idle_ms:
                idle.append(state.read)
                continue
            flight = state.in_flight
            while flight and wall - flight[0][0] >= self.settle_ms:
                state.done = max(state.done, flight.popleft()[1])
            live.append(state.done)
        newest = min(live) if live else max(idle, default=0)
        if newest > self._now:
            self._now = newest
            self._measure(wall)

    def wall_due(self, due_event_ms: int) -> int:
        """The wall-clock time (ms) to check again for something due at ``due_event_ms``.

        Before the speed is known (the first second of a run), check again soon.
        """
        wall = self._wall()
        rate = self._speed(wall)
        if rate is None:
            return wall + self.min_wait_ms
        ahead = max(due_event_ms - self._now, 0) / rate
        return wall + int(min(max(ahead, self.min_wait_ms), self.max_wait_ms))

    def _speed(self, wall: int) -> float | None:
        """The measured speed, slowing towards 1x while no newer event arrives (a replay that
        has ended, a quiet night), so timers do not wake every second for nothing."""
        mark, rate = self._mark, self._rate
        if mark is None or rate is None:
            return rate
        since = wall - mark[0]
        if since <= 1_000:
            return rate
        return max(min(rate, (self._now - mark[1]) / since), 1.0)

    def _measure(self, wall: int) -> None:
        """Update the event-time speed every second of wall time (under the lock)."""
        if self._mark is None:
            self._mark = (wall, self._now)
            return
        wall_then, event_then = self._mark
        if wall - wall_then >= 1_000:
            self._rate = max((self._now - event_then) / (wall - wall_then), 1.0)
            self._mark = (wall, self._now)
