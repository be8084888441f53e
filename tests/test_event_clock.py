"""The stream's event-time clock: slowest live partition, batches in flight, start-up grace,
speed, guards."""

from __future__ import annotations

from operators.event_clock import EventClock

HOUR = 3_600_000


def clock_at(wall: list[int], **settings: int) -> EventClock:
    return EventClock(wall_clock=lambda: wall[0], **settings)


def test_the_clock_waits_for_every_partition_then_follows_the_slowest() -> None:
    wall = [0]
    clock = clock_at(wall, idle_ms=1_000, settle_ms=1)
    clock.observe([(10 * HOUR, 0)], partition="a")
    clock.observe([(2 * HOUR, 0)], partition="b")
    assert clock.now_ms() == 0  # partitions are still reporting in
    wall[0] = 1_000
    clock.observe([(11 * HOUR, 0)], partition="a")
    clock.observe([(5 * HOUR, 0)], partition="b")
    assert clock.now_ms() == 2 * HOUR  # b is behind, and its newest batch is in flight
    assert clock.newest_ms() == 11 * HOUR
    wall[0] = 1_001  # settled
    clock.observe([(6 * HOUR, 0)], partition="b")
    assert clock.now_ms() == 5 * HOUR
    wall[0] = 2_500  # nothing for 1.5 s: idle partitions hold nothing back, all they read counts
    assert clock.now_ms() == 11 * HOUR
    clock.observe([(7 * HOUR, 0)], partition="b")
    assert clock.now_ms() == 11 * HOUR  # it never goes back


def test_a_timestamp_far_ahead_of_its_ingest_time_does_not_move_the_clock() -> None:
    wall = [0]
    clock = clock_at(wall, idle_ms=0, settle_ms=0)
    clock.observe([(HOUR, HOUR), (1_000 * HOUR, HOUR)])
    assert clock.now_ms() == HOUR


def test_timers_follow_the_measured_speed_and_slow_down_when_events_stop() -> None:
    wall = [0]
    clock = clock_at(wall, idle_ms=0, settle_ms=0, min_wait_ms=100, max_wait_ms=60_000)
    clock.observe([(1, 0)])
    assert clock.wall_due(10 * HOUR) == 100  # the speed is not known yet: check soon
    wall[0] = 1_000
    clock.observe([(HOUR, 0)])  # an hour of event time per wall second
    assert clock.wall_due(11 * HOUR) == 1_000 + 10_000
    assert clock.wall_due(HOUR + 1) == 1_000 + 100  # never sooner than min_wait_ms
    wall[0] = 101_000  # nothing for 100 s: the speed falls towards 1x (capped by max_wait)
    assert clock.wall_due(11 * HOUR) == 101_000 + 60_000
