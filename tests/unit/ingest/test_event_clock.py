"""Event time from the data: per-partition watermarks, idle partitions, worker tables, speed."""

from __future__ import annotations

import pytest

from operators.ingest import (
    NO_WATERMARK,
    ChannelState,
    EventTimeSpeed,
    PartitionClock,
    Progress,
    WatermarkTable,
)
from operators.ingest.units import HOUR_MS

A, B = "0-events", "1-events"


def partition(lateness_ms: int = 0, idle_after_ms: int = 1_000) -> PartitionClock:
    return PartitionClock(A, lateness_ms, idle_after_ms, wall_ms=0)


def test_every_message_moves_its_partition_and_is_stamped_with_the_watermark_before_it() -> None:
    part = partition(lateness_ms=10 * 60_000)
    stamps = []
    for ts in (5 * HOUR_MS, 7 * HOUR_MS, 6 * HOUR_MS, 7 * HOUR_MS - 60_000):
        stamps.append(part.watermark_ms)
        part.stamp(ts)
    assert stamps[1:] == [5 * HOUR_MS - 600_000, 7 * HOUR_MS - 600_000, 7 * HOUR_MS - 600_000]
    assert part.newest_ms == 7 * HOUR_MS  # older events never move it back
    late = [
        ts < stamp
        for ts, stamp in zip((6 * HOUR_MS, 7 * HOUR_MS - 60_000), stamps[2:], strict=True)
    ]
    assert late == [True, False]  # an hour behind is late; a minute is within the lateness


def test_an_event_from_a_broken_clock_does_not_move_its_partition() -> None:
    part = partition()
    part.stamp(10 * HOUR_MS, ingest_ms=10 * HOUR_MS)
    part.stamp(10 * HOUR_MS + 2 * HOUR_MS, ingest_ms=10 * HOUR_MS)  # two hours ahead of its ingest
    assert part.newest_ms == 10 * HOUR_MS
    part.stamp(11 * HOUR_MS)  # no ingest time known: trusted
    assert part.newest_ms == 11 * HOUR_MS


def test_markers_say_only_what_changed_and_idleness_needs_the_end_and_the_quiet() -> None:
    part = partition(lateness_ms=5, idle_after_ms=1_000)
    assert part.marker(wall_ms=0, caught_up=True) is None  # nothing read: nothing to say
    part.stamp(100)
    first = part.marker(wall_ms=10, caught_up=False, read=True)
    assert first == Progress(A, 95, 100, ChannelState.ACTIVE)
    assert part.marker(wall_ms=20, caught_up=False) is None
    assert part.marker(wall_ms=5_000, caught_up=False) is None  # quiet, but not at the end
    assert part.marker(wall_ms=1_009, caught_up=True) is None  # at the end, not quiet long
    idle = part.marker(wall_ms=1_010, caught_up=True)
    assert idle == Progress(A, 95, 100, ChannelState.IDLE)
    part.stamp(120)  # it speaks again: active
    assert part.marker(wall_ms=2_000, caught_up=False, read=True) == Progress(A, 115, 120)
    assert part.finish() == Progress(A, 115, 120, ChannelState.DONE)


def test_an_empty_partition_goes_idle_and_then_holds_nothing_back() -> None:
    part = partition(idle_after_ms=1_000)
    marker = part.marker(wall_ms=1_000, caught_up=True)
    assert marker is not None and marker.state is ChannelState.IDLE
    table = WatermarkTable()
    table.note(Progress(B, 50, 60), expected=(A, B))
    assert table.watermark_ms == NO_WATERMARK  # A has not reported
    assert table.note(marker, expected=(A, B)) and table.watermark_ms == 50


def test_the_watermark_is_the_slowest_active_channel_and_never_goes_back() -> None:
    table = WatermarkTable()
    channels = (A, B)
    assert not table.note(Progress(A, 500, 510), channels)  # B is still to report
    assert table.note(Progress(B, 200, 210), channels) and table.watermark_ms == 200
    assert table.note(Progress(B, 300, 310), channels) and table.watermark_ms == 300
    assert not table.note(Progress(A, 900, 910), channels)  # B holds it back
    assert table.note(Progress(B, 300, 310, ChannelState.IDLE), channels)
    assert table.watermark_ms == 900  # the idle one no longer holds it back
    assert not table.note(Progress(B, 250, 260), channels)  # B speaks again, behind: no way back
    assert table.watermark_ms == 900
    assert table.end_ms() == 910
    assert table.idle() == []


def test_when_every_channel_is_idle_or_done_the_watermark_moves_to_the_newest() -> None:
    table = WatermarkTable()
    table.note(Progress(A, 100, 110, ChannelState.DONE), (A, B))
    table.note(Progress(B, 40, 50, ChannelState.IDLE), (A, B))
    assert table.watermark_ms == 100
    assert table.idle() == [A, B]


def test_a_resumed_table_merges_per_channel_the_further_marker() -> None:
    table = WatermarkTable()
    table.note(Progress(A, 100, 110), (A, B))
    resumed = WatermarkTable()
    resumed.note(Progress(A, 50, 60), (A, B))
    resumed.note(Progress(B, 70, 80), (A, B))
    table.merge(resumed)
    assert table.channels == {A: Progress(A, 100, 110), B: Progress(B, 70, 80)}
    assert table.recompute((A, B)) and table.watermark_ms == 70


@pytest.mark.parametrize(
    ("rate", "ahead", "waits"),
    [(60.0, 600_000, 10_000), (1.0, 5 * 60_000, 300_000), (1_000_000.0, HOUR_MS, 1_000)],
)
def test_timers_wait_by_the_measured_speed_within_bounds(
    rate: float, ahead: int, waits: int
) -> None:
    speed = EventTimeSpeed(min_wait_ms=1_000, max_wait_ms=300_000)
    assert speed.wall_due(ahead, 0, 0, wall_ms=0) == 1_000  # speed unknown: soon
    speed.note(0, wall_ms=0)
    now = round(rate * 1_000)
    speed.note(now, wall_ms=1_000)
    assert speed.wall_due(now + ahead, now, now, wall_ms=1_000) - 1_000 == waits


def test_a_due_time_some_input_has_passed_is_looked_at_again_soon() -> None:
    speed = EventTimeSpeed(held_wait_ms=2_000)
    speed.note(0, wall_ms=0)
    speed.note(1_000, wall_ms=1_000)  # real time
    # One partition is an hour ahead of the slowest: when the slow one goes idle the
    # watermark jumps, so a check due within that hour does not wait an hour.
    assert speed.wall_due(30 * 60_000, 1_000, HOUR_MS, wall_ms=5_000) == 7_000
    assert speed.wall_due(2 * HOUR_MS, 1_000, HOUR_MS, wall_ms=5_000) == 5_000 + 300_000 * 2


def test_a_pause_keeps_the_speed_and_a_standing_watermark_slows_to_real_time() -> None:
    speed = EventTimeSpeed(max_wait_ms=10**9, half_life_ms=60_000)
    speed.note(0, wall_ms=0)
    speed.note(HOUR_MS, wall_ms=1_000)  # a replay: an hour a second
    # An 8-second broker outage: the stream resumes as fast as before, so a check due an
    # hour of event time ahead still looks again within about a second, not in an hour.
    assert speed.wall_due(2 * HOUR_MS, HOUR_MS, HOUR_MS, wall_ms=9_000) - 9_000 == 1_096
    # The outage's slow second does not pull the speed down either.
    speed.note(HOUR_MS + 1_000, wall_ms=9_000)
    speed.note(HOUR_MS + 2_000, wall_ms=10_000)
    assert speed.wall_due(2 * HOUR_MS, HOUR_MS, HOUR_MS, wall_ms=10_000) - 10_000 == 1_109
    # Twenty minutes later nothing moved (the replay ended): wait in real time.
    assert speed.wall_due(2 * HOUR_MS, HOUR_MS, HOUR_MS, wall_ms=1_210_000) == 1_210_000 + HOUR_MS


def test_an_idle_partition_repeats_its_marker_while_it_stays_idle() -> None:
    part = partition(idle_after_ms=1_000)
    part.stamp(100)
    part.marker(wall_ms=0, caught_up=False, read=True)
    assert part.marker(wall_ms=1_000, caught_up=True) == Progress(A, 100, 100, ChannelState.IDLE)
    assert part.marker(wall_ms=1_500, caught_up=True) is None
    assert part.marker(wall_ms=2_000, caught_up=True) == Progress(A, 100, 100, ChannelState.IDLE)


def test_when_a_quiet_channel_speaks_again_the_others_hold_back_until_confirmed_idle() -> None:
    # Everyone went quiet: the watermark moved to the newest of them.
    channels = ("a", "b", "c")
    table = WatermarkTable()
    for name, newest in zip(channels, (100, 90, 80), strict=True):
        table.note(Progress(name, newest, newest, ChannelState.IDLE), channels, wall_ms=0)
    assert table.watermark_ms == 100
    # Traffic resumes and "a" is read first, a backlog far ahead: "b" and "c" may have
    # theirs on the way, so they hold the watermark back again.
    assert not table.note(Progress("a", 5_000, 5_000), channels, wall_ms=10_000, confirm_ms=500)
    assert table.watermark_ms == 100 and table.idle() == []
    assert not table.note(Progress("b", 4_000, 4_000), channels, wall_ms=10_050, confirm_ms=500)
    # "c" repeats that it is idle too soon to say it saw the resumed traffic, then later.
    idle_c = Progress("c", 80, 80, ChannelState.IDLE)
    assert not table.note(idle_c, channels, wall_ms=10_100, confirm_ms=500)
    assert table.note(idle_c, channels, wall_ms=10_600, confirm_ms=500)
    assert table.watermark_ms == 4_000 and table.idle() == ["c"]
