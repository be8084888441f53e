"""Event time from the data: per-partition progress, watermarks, and when to look again.

Some outputs depend on time passing, not on a user acting: a user lapses 30 days after
their last purchase, a category's hour closes once no more of its events can come. In event
time, "now" is how far the input has got, and it must be decided by the data alone, or two
runs of the same topic (or a run and its replay after a crash) disagree.

This module holds the pure parts of that, as Flink does it:

* :class:`PartitionClock` -- one input partition, as its source reads it. Every message's
  event time moves the partition's ``newest_ms`` (times far ahead of their ingest time, a
  producer's broken clock, do not). Its *watermark* is ``newest_ms - lateness_ms``: an event
  read later and older than that is **late**. Each event carries the watermark its partition
  had just before it (``Event.watermark_ms``), so whether it was late is a fact about the
  partition's order, the same in every run.
* :class:`Progress` -- the marker a source emits behind a batch of a partition's events,
  saying how far that partition got. The dataflow sends a copy to every worker of the next
  keyed step, through the same channels as the events, so a worker that has a marker has
  every event the marker covers.
* :class:`WatermarkTable` -- what one worker knows: the newest marker of each input channel
  (partitions, or the workers of an upstream step) and the watermark it acts on, the minimum
  over the channels that are not idle; it never goes back, and it is snapshotted with the
  rest of the state, so a restarted worker resumes at the same time. A channel that has not
  reported yet holds the watermark back; idle and finished channels do not.
* :class:`EventTimeSpeed` -- Bytewax timers take wall-clock times. How fast the watermark
  moves against the wall clock says when a check due at an event time should look again;
  it only decides *when* a timer looks, never what it sees.

A partition is *idle* when its reader has caught up with its end and nothing came for
``idle_after_ms`` of wall time: then it stops holding the watermark back (a quiet partition
would stop everybody's clock), and it counts again with its next message; while idle, its
source repeats the idle marker every ``idle_after_ms``. When every channel is idle, the
watermark moves to the newest of them, so the last hour of a stream that went quiet still
closes. When a quiet channel speaks again, the others' idleness is in doubt (traffic that
resumes on one partition usually resumes on all, and the first to be read would otherwise
carry the watermark past the rest): they hold the watermark back again until an idle marker
confirms them, sent at least ``confirm_ms`` after the doubt arose. Those wall-clock
decisions are the only ones in event time.

>>> part = PartitionClock("events/0", lateness_ms=10, idle_after_ms=1_000, wall_ms=0)
>>> marks = []
>>> for t in (100, 130, 125, 105):
...     marks.append(part.watermark_ms)  # the watermark each event is stamped with
...     part.stamp(t)
>>> marks  # 105 is late: older than 120
[-10, 90, 120, 120]
>>> part.marker(wall_ms=5, caught_up=False, read=True)  # sent behind the batch
Progress(channel='events/0', watermark_ms=120, newest_ms=130, state=<ChannelState.ACTIVE: 0>)
>>> part.marker(wall_ms=6, caught_up=False) is None  # nothing new to say
True
>>> part.marker(wall_ms=1_005, caught_up=True).state == ChannelState.IDLE
True
>>> table = WatermarkTable()
>>> table.note(Progress("events/0", 120, 130), expected=("events/0", "events/1"))
False
>>> table.note(Progress("events/1", 40, 50), expected=("events/0", "events/1"))
True
>>> table.watermark_ms, table.end_ms()
(40, 130)
>>> table.note(Progress("events/1", 40, 50, ChannelState.IDLE), ("events/0", "events/1"))
True
>>> table.watermark_ms
120
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import msgspec

from operators.ingest.events import NO_WATERMARK

#: How far ahead of its ingest time an event time may be and still move its partition.
MAX_AHEAD_MS: Final = 3_600_000


class ChannelState(enum.IntEnum):
    """Whether a channel holds the watermark back."""

    ACTIVE = 0
    IDLE = 1  # caught up and quiet for the idle time: holds nothing back until it speaks
    DONE = 2  # the input ended (a file, a topic read without tailing)


class Progress(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """How far one input channel has got: sent behind the events it covers.

    ``watermark_ms`` is the channel's newest event time less the allowed lateness (what
    is older is late); ``newest_ms`` the newest itself (where the input ends).
    """

    channel: str
    watermark_ms: int
    newest_ms: int
    state: ChannelState = ChannelState.ACTIVE


@dataclass
class PartitionClock:
    """One input partition's event time, kept by the source that reads it.

    ``newest_ms`` (0: nothing yet) is what a restarted source resumes from, with the offset.
    """

    channel: str
    lateness_ms: int
    idle_after_ms: int
    wall_ms: int  # wall time of the last message (or of the start)
    newest_ms: int = 0
    max_ahead_ms: int = MAX_AHEAD_MS
    state: ChannelState = ChannelState.ACTIVE
    _said: Progress | None = None
    _said_wall: int = 0  # when the last marker was sent

    @property
    def watermark_ms(self) -> int:
        """The partition's watermark now: an event read next and older than this is late."""
        return self.newest_ms - self.lateness_ms

    def stamp(self, ts_ms: int, ingest_ms: int = 0) -> None:
        """Note an event's time (``ingest_ms``: when it entered the system, 0 if unknown).

        An event time more than ``max_ahead_ms`` past its ingest time does not move the
        partition: one broken producer clock must not make everybody else's events late.
        """
        if ts_ms > self.newest_ms and (not ingest_ms or ts_ms <= ingest_ms + self.max_ahead_ms):
            self.newest_ms = ts_ms

    def marker(self, wall_ms: int, caught_up: bool, read: bool = False) -> Progress | None:
        """The marker to send after a batch (``None``: nothing changed since the last one).

        ``read``: the batch had messages; ``caught_up``: the reader is at the partition's end.
        """
        if read:
            self.wall_ms = wall_ms
            if self.state is ChannelState.IDLE:
                self.state = ChannelState.ACTIVE
        elif (
            caught_up
            and self.state is ChannelState.ACTIVE
            and wall_ms - self.wall_ms >= self.idle_after_ms
        ):
            self.state = ChannelState.IDLE
        repeat = self.state is ChannelState.IDLE and wall_ms - self._said_wall >= self.idle_after_ms
        return self._say(wall_ms, repeat)

    def finish(self) -> Progress:
        """The last marker: the partition's input has ended."""
        self.state = ChannelState.DONE
        self._said = self._progress()
        return self._said

    def _progress(self) -> Progress:
        return Progress(self.channel, self.watermark_ms, self.newest_ms, self.state)

    def _say(self, wall_ms: int, repeat: bool) -> Progress | None:
        progress = self._progress()
        if not repeat and (
            progress == self._said or (not self.newest_ms and self.state is ChannelState.ACTIVE)
        ):
            return None
        self._said, self._said_wall = progress, wall_ms
        return progress


class WatermarkTable(msgspec.Struct):
    """One worker's view of event time: each input channel's last marker and the watermark.

    Snapshotted with the worker's state, so a restarted worker acts on the same time.
    """

    channels: dict[str, Progress] = msgspec.field(default_factory=dict)
    watermark_ms: int = NO_WATERMARK
    #: Idle channels whose idleness is in doubt, and the wall time the doubt arose.
    doubted: dict[str, int] = msgspec.field(default_factory=dict)

    def note(
        self, progress: Progress, expected: Collection[str], wall_ms: int = 0, confirm_ms: int = 0
    ) -> bool:
        """Take a channel's marker at wall time ``wall_ms``; ``True`` if the watermark moved.

        ``expected`` names every channel there is: one that has not reported holds the
        watermark back. Markers of one channel arrive in order, so the last one wins. An
        idle channel speaking again puts the others' idleness in doubt; an idle marker
        ``confirm_ms`` or more after that confirms it.
        """
        name, state = progress.channel, progress.state
        before = self.channels.get(name)
        self.channels[name] = progress
        if state is ChannelState.IDLE:
            since = self.doubted.get(name)
            if since is not None and wall_ms - since >= confirm_ms:
                del self.doubted[name]
        else:
            self.doubted.pop(name, None)
            woke = before is not None and before.state is ChannelState.IDLE
            if state is ChannelState.ACTIVE and woke:
                for other, mark in self.channels.items():
                    if mark.state is ChannelState.IDLE:
                        self.doubted.setdefault(other, wall_ms)
        return self.recompute(expected)

    def recompute(self, expected: Collection[str]) -> bool:
        """Work the watermark out again (``expected`` may have changed); ``True`` if it moved."""
        marks = [self.channels.get(name) for name in expected]
        if not marks or any(mark is None for mark in marks):
            return False
        known = [mark for mark in marks if mark is not None]
        doubted = self.doubted
        live = [
            m.watermark_ms for m in known if m.state is ChannelState.ACTIVE or m.channel in doubted
        ]
        candidate = min(live) if live else max(m.watermark_ms for m in known)
        if candidate <= self.watermark_ms:
            return False
        self.watermark_ms = candidate
        return True

    def merge(self, other: WatermarkTable) -> None:
        """Take in what ``other`` knows (a resumed snapshot): per channel the further marker."""
        for name, mark in other.channels.items():
            mine = self.channels.get(name)
            if mine is None or (mark.newest_ms, mark.watermark_ms) > (
                mine.newest_ms,
                mine.watermark_ms,
            ):
                self.channels[name] = mark
        for name, since in other.doubted.items():
            self.doubted[name] = min(since, self.doubted.get(name, since))
        self.watermark_ms = max(self.watermark_ms, other.watermark_ms)

    def end_ms(self) -> int:
        """The newest event time of any channel: how far the input got, once it has ended."""
        return max((m.newest_ms for m in self.channels.values()), default=0)

    def idle(self) -> list[str]:
        """The channels that hold nothing back now."""
        return sorted(
            n
            for n, m in self.channels.items()
            if m.state is not ChannelState.ACTIVE and n not in self.doubted
        )


@dataclass
class EventTimeSpeed:
    """How fast a watermark moves against the wall clock, to set Bytewax timers by.

    About 1x for a live stream, thousands of times faster for a replay of a year-old log.
    It never assumes slower than 1x, so a live stream's timer fires no later than its event
    time falls due; a timer waits at least ``min_wait_ms`` (timers cannot spin) and at most
    ``max_wait_ms``. A timer that fires early finds the watermark short of its due time and
    sets itself again; one that fires late delays its output, so the speed is remembered
    through a pause: a broker outage, a rebalance or a restart's reconnection stops the
    watermark for seconds, and the stream then resumes as fast as before or faster. The
    speed remembered halves for every ``half_life_ms`` the watermark stands still (and
    fades the same way towards a slower measured speed), so after a replay ends the timers
    settle to real time within minutes instead of waking every second.

    A due time the input has already reached somewhere (``reached_ms``: the newest event
    time read, less the lateness) waits for the slowest input to catch up or go idle, which
    can move the watermark there at any moment: such a timer looks again within
    ``held_wait_ms``.

    >>> speed = EventTimeSpeed()
    >>> speed.note(0, wall_ms=0); speed.note(60_000, wall_ms=1_000)  # a minute a second
    >>> speed.wall_due(600_000, watermark_ms=60_000, reached_ms=60_000, wall_ms=1_000)
    10000
    >>> speed.wall_due(600_000, watermark_ms=60_000, reached_ms=900_000, wall_ms=1_000)
    3000
    >>> # a minute's pause: the speed remembered is halved, not forgotten
    >>> speed.wall_due(600_000, watermark_ms=60_000, reached_ms=60_000, wall_ms=61_000)
    79000
    """

    min_wait_ms: int = 1_000
    max_wait_ms: int = 600_000
    held_wait_ms: int = 2_000
    half_life_ms: int = 60_000
    _mark: tuple[int, int] | None = None  # (wall, watermark) where the speed was last read
    _moved_ms: int = 0  # wall time the watermark last moved
    _rate: float | None = None  # event ms per wall ms (at least 1); None: not yet known

    def note(self, watermark_ms: int, wall_ms: int) -> None:
        """The watermark moved to ``watermark_ms``; re-measure the speed once a second."""
        self._moved_ms = wall_ms
        if self._mark is None:
            self._mark = (wall_ms, watermark_ms)
            return
        wall_then, event_then = self._mark
        elapsed = wall_ms - wall_then
        if elapsed >= 1_000:
            measured = max((watermark_ms - event_then) / elapsed, 1.0)
            self._rate = max(measured, self._faded(elapsed))
            self._mark = (wall_ms, watermark_ms)

    def wall_due(self, due_event_ms: int, watermark_ms: int, reached_ms: int, wall_ms: int) -> int:
        """The wall time (ms) to look again for something due at watermark ``due_event_ms``.

        Before the speed is known (the first second of a run), look again soon.
        """
        if self._rate is None:
            return wall_ms + self.min_wait_ms
        ahead = max(due_event_ms - watermark_ms, 0)
        rate = self._faded(wall_ms - self._moved_ms)
        longest = self.held_wait_ms if due_event_ms <= reached_ms else self.max_wait_ms
        return wall_ms + int(min(max(ahead / rate, self.min_wait_ms), longest))

    def _faded(self, standing_ms: int) -> float:
        """The speed remembered after ``standing_ms`` of wall time (at least 1x)."""
        rate = self._rate or 1.0
        return max(rate * 0.5 ** (max(standing_ms, 0) / self.half_life_ms), 1.0)
