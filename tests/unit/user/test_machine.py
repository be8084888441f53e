"""The user machine on its own: deterministic whatever the batching, the wake-ups and the
restarts, timers by the watermark only, and everything it does reported to its observer."""

from __future__ import annotations

import copy
import json
import pickle
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import replace

import numpy as np
import pytest

from operators.apps import Applications, RiskParams, load_segment_book
from operators.apps.segments import (
    SegmentBook,
    SegmentTransition,
    evaluate,
    parse_segment_book,
)
from operators.apps.segments.rfm import profile_rfm
from operators.ingest import Event
from operators.ingest.units import DAY_MS
from operators.profile import ProfileDelta, ProfileParams
from operators.user import MachineSettings, Ports, UserMachine, UserOutput

PARAMS = ProfileParams()
APPS = Applications(load_segment_book(windows=PARAMS.windows), PARAMS.windows, RiskParams())
T0 = 1_700_000_000_000
TYPES = ("view", "click", "add_to_cart", "purchase", "login", "search", "review", "refund")


class Batches:
    """Text vectors that are ready only once ``flush`` ran: a batcher without a model."""

    def __init__(self) -> None:
        self.ready: dict[str, np.ndarray] = {}
        self.open: set[str] = set()

    def vector(self, text: str, now_ms: int) -> np.ndarray | None:
        if text in self.ready:
            return self.ready[text]
        self.open.add(text)
        return None

    def due_ms(self, now_ms: int = 0) -> int | None:
        return 5 if self.open else None

    def flush(self) -> None:
        for text in sorted(self.open):
            seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")
            self.ready[text] = np.random.default_rng(seed).standard_normal(4).astype(np.float32)
        self.open.clear()


class Recorder:
    def __init__(self) -> None:
        self.calls: Counter[tuple[str, ...]] = Counter()
        self.users = self.state_bytes = 0

    def resumed(self, segments: tuple[str, ...]) -> None:
        self.calls["resumed", *segments] += 1

    def transition(self, segment: str, direction: str) -> None:
        self.calls["transition", segment, direction] += 1

    def alert(self, kind: str) -> None:
        self.calls["alert", kind] += 1

    def late_event(self) -> None:
        self.calls["late",] += 1

    def opinion(self, event_type: str, polarity: float) -> None:
        self.calls["opinion", event_type] += 1

    def expired(self) -> None:
        self.calls["expired",] += 1

    def held(self, users: int, state_bytes: int) -> None:
        self.users += users
        self.state_bytes += state_bytes


def settings(emit_interval_ms: int = 0) -> MachineSettings:
    return MachineSettings(
        PARAMS,
        lambda: APPS,
        dim=4,
        emit_interval_ms=emit_interval_ms,
        expire_after_ms=60 * DAY_MS,
        erased_memory_ms=7 * DAY_MS,
    )


def events(seed: int, n: int = 120) -> list[Event]:
    rng = random.Random(seed)
    out, ts = [], T0
    for i in range(n):
        ts += rng.choice((1_000, 60_000, 3_600_000, 5 * DAY_MS))
        kind = rng.choice(TYPES)
        text = {"search": f"query {rng.randint(0, 5)}", "review": "great shoes"}.get(kind)
        item = None if kind in ("login", "search") else f"i{rng.randint(0, 9)}"
        price = 10.0 * rng.randint(1, 20) if kind in ("purchase", "refund") else None
        category = "shoes" if item else None
        out.append(
            Event(f"e{i}", "u1", ts, kind, item_id=item, text=text, price=price, category=category)
        )
    out.insert(n // 2, out[n // 3])  # a re-send: refused as a duplicate
    return out


def drive(
    stream: list[Event],
    cuts: set[int],
    restarts: set[int],
    observer: Recorder | None = None,
    finals: Collection[int] = (),
) -> list[UserOutput]:
    """Feed ``stream`` in batches cut at ``cuts``, waking the machine when it asks and
    restarting it from its snapshot at ``restarts``; the watermark follows the events. At
    ``finals`` the machine gives a final snapshot, held as a stream processor holds it."""
    held = []
    batches = Batches()
    ports = Ports(vectors=batches, observer=observer or Recorder())
    machine = UserMachine(settings(), ports)
    out: list[UserOutput] = []
    start = 0
    for i in sorted({*cuts, len(stream)}):
        batch = stream[start:i]
        start = i
        if not batch:
            continue
        out += machine.receive(list(batch), now_ms=0)
        while machine.waiting:
            batches.flush()
            out += machine.advance(now_ms=0)
        watermark = max(e.ts_ms for e in batch) - PARAMS.allowed_lateness_ms
        if machine.next_due().event_ms and machine.next_due().event_ms <= watermark:
            out += machine.on_time(now_ms=0, watermark_ms=watermark)
        if i in restarts:
            machine = UserMachine(settings(), ports, machine.snapshot())
        if i in finals:
            machine.rest()  # as the adapter leaves it after each activation
            held.append(machine.snapshot(final=True))
    out += machine.finish(now_ms=0, end_ms=stream[-1].ts_ms)
    return out


def keyed(outputs: list[UserOutput]) -> list[tuple[str, object]]:
    """Outputs as comparable records (deltas by what they say, not when they were sent)."""
    out: list[tuple[str, object]] = []
    for o in outputs:
        if isinstance(o, ProfileDelta):
            out.append(("delta", (o.version, o.kind, tuple(o.event_ids), o.event_time_ms)))
        else:
            out.append((type(o).__name__, o))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_stream_gives_the_same_outputs_whatever_the_batches(seed: int) -> None:
    stream = events(seed)
    rng = random.Random(seed)
    one = drive(stream, cuts=set(range(1, len(stream))), restarts=set())
    cuts = set(rng.sample(range(1, len(stream)), 15))
    other = drive(stream, cuts=cuts, restarts=set())
    assert keyed(one) == keyed(other)
    kinds = Counter(type(o).__name__ for o in one)
    assert kinds["ProfileDelta"] == len(stream) - 1  # one per accepted event: no coalescing
    assert kinds["DeadLetter"] == 1  # the re-send


@pytest.mark.parametrize("seed", [4, 5])
def test_a_restart_from_the_snapshot_changes_nothing(seed: int) -> None:
    stream = events(seed)
    cuts = set(range(1, len(stream)))
    straight = drive(stream, cuts, restarts=set())
    restarted = drive(stream, cuts, restarts=set(random.Random(seed).sample(sorted(cuts), 10)))
    assert keyed(straight) == keyed(restarted)


@pytest.mark.parametrize("seed", [6, 7])
def test_a_machine_that_steps_after_its_final_snapshot_changes_nothing(seed: int) -> None:
    """Bytewax may step a key again after the final snapshots, in the same activation, when
    several epochs close at the end of the input: the machine takes its bytes back."""
    stream = events(seed)
    cuts = set(range(1, len(stream)))
    straight = drive(stream, cuts, restarts=set())
    finals = set(random.Random(seed).sample(sorted(cuts), 10))
    assert keyed(drive(stream, cuts, restarts=set(), finals=finals)) == keyed(straight)


def test_the_final_snapshot_takes_the_state_bytes_instead_of_sharing_them() -> None:
    recorder = Recorder()
    machine = UserMachine(settings(), Ports(vectors=None, observer=recorder))
    machine.receive([Event("e1", "u1", T0, "login")], now_ms=0)
    machine.rest()
    stored = machine.emitted
    assert stored is not None
    snap = machine.snapshot(final=True)
    assert snap.emitted is stored and machine.emitted is None  # one copy in memory, not two
    assert recorder.state_bytes == 0
    assert UserMachine(settings(), Ports(vectors=None), snap).emitted == stored  # resumable
    assert not machine.finished()  # it takes them back to answer (not "erased: discard me")
    assert machine.emitted is stored and recorder.state_bytes == len(stored)
    machine.snapshot(final=True)  # and the stream processor drops this one at once
    with pytest.raises(RuntimeError, match="final snapshot"):
        machine.receive([Event("e2", "u1", T0 + 1, "login")], now_ms=0)


def test_users_with_the_same_memberships_share_one_tuple_of_them() -> None:
    machines = []
    for user in ("u1", "u2"):
        machine = UserMachine(settings(), Ports(vectors=None))
        machine.receive([Event(f"e-{user}", user, T0, "login")], now_ms=0)
        machines.append(machine)
    first, second = machines
    assert first.members == ("new_users",) and first.members is second.members
    restored = UserMachine(
        settings(), Ports(vectors=None), pickle.loads(pickle.dumps(first.snapshot()))
    )
    assert restored.members is first.members  # not a tuple of its own after a restart


def test_timers_follow_the_watermark_not_the_wall_clock() -> None:
    machine = UserMachine(settings(emit_interval_ms=1_000), Ports(vectors=None))
    out = machine.receive([Event("e1", "u1", T0, "login")], now_ms=0)
    assert [o.segment for o in out if isinstance(o, SegmentTransition)] == ["new_users"]
    due = machine.next_due()
    assert due.wall_ms == 1_000 and due.event_ms > T0
    # Any amount of wall time: the delta goes out, the segment check does not run.
    first = machine.on_time(now_ms=10**12, watermark_ms=T0)
    assert [type(o).__name__ for o in first] == ["ProfileDelta"]
    assert machine.next_due() == (0, due.event_ms)
    # The watermark passes the check: the user stops being new, on a delta of the clock's.
    later = machine.on_time(now_ms=10**12, watermark_ms=due.event_ms)
    assert [(o.segment, o.direction) for o in later if isinstance(o, SegmentTransition)] == [
        ("new_users", "exit")
    ]
    assert any(isinstance(o, ProfileDelta) for o in later) is False  # it waits for the interval
    assert machine.next_due().wall_ms == 10**12 + 1_000


@pytest.mark.parametrize(
    ("ingest_ms", "wall_ms"),
    [
        (9_700, 10_700),  # it queued 300 ms before the user: 700 ms left of the interval
        (8_000, 11_000),  # a backlog: a whole interval from now, so catching up coalesces
        (12_000, 11_000),  # a producer's clock ahead: no longer than from now
        (0, 11_000),  # no ingest time
    ],
)
def test_the_interval_counts_from_when_the_first_event_entered(
    ingest_ms: int, wall_ms: int
) -> None:
    machine = UserMachine(settings(emit_interval_ms=1_000), Ports(vectors=None))
    first = Event("e1", "u1", T0, "login", ingest_ms=ingest_ms)
    machine.receive([first], now_ms=10_000)
    assert machine.next_due().wall_ms == wall_ms
    machine.receive([Event("e2", "u1", T0 + 1, "login", ingest_ms=10_400)], now_ms=10_450)
    assert machine.next_due().wall_ms == wall_ms  # a later event does not move it
    assert machine.on_time(now_ms=wall_ms - 1, watermark_ms=T0) == []
    (delta,) = machine.on_time(now_ms=wall_ms, watermark_ms=T0)
    assert isinstance(delta, ProfileDelta) and delta.event_ids == ["e1", "e2"]


def test_everything_it_does_is_reported_to_the_observer() -> None:
    recorder = Recorder()
    stream = events(7)
    outputs = drive(stream, cuts=set(range(1, len(stream))), restarts=set(), observer=recorder)
    transitions = Counter(
        ("transition", o.segment, o.direction) for o in outputs if isinstance(o, SegmentTransition)
    )
    assert transitions and all(recorder.calls[k] == v for k, v in transitions.items())
    expiry = UserMachine(settings(), Ports(vectors=None, observer=recorder))
    expiry.receive([Event("x1", "u2", T0, "login")], now_ms=0)
    out = expiry.on_time(now_ms=0, watermark_ms=T0 + 60 * DAY_MS)
    assert recorder.calls["expired",] == 1
    assert any(isinstance(o, ProfileDelta) and o.kind == "tombstone" for o in out)
    # An erased user's machine keeps the marker that refuses their re-sent events ...
    erased = UserMachine(settings(), Ports(vectors=None))
    erased.receive([Event("d1", "u3", T0, "login"), Event("d2", "u3", T0 + 1, "delete_user")], 0)
    assert not erased.finished()
    assert [type(o).__name__ for o in erased.receive([Event("d0", "u3", T0 - 1, "login")], 0)] == [
        "DeadLetter"
    ]
    erased.on_time(now_ms=0, watermark_ms=T0 + 7 * DAY_MS + 1)
    assert erased.finished()  # ... for erased_memory_ms of event time, then goes


def test_the_users_held_and_their_state_bytes_add_up() -> None:
    recorder = Recorder()
    ports = Ports(vectors=None, observer=recorder)
    machines = [UserMachine(settings(), ports) for _ in range(3)]
    for i, machine in enumerate(machines):
        machine.receive([Event(f"e{i}", f"u{i}", T0, "login")], now_ms=0)
    assert recorder.users == 3
    assert recorder.state_bytes == sum(len(m.emitted or b"") for m in machines) > 0
    restored = UserMachine(settings(), ports, machines[0].snapshot())  # after a restart
    machines[0].release()
    machines[1].receive([Event("d", "u1", T0 + 1, "delete_user")], now_ms=0)  # erased
    assert recorder.users == 3
    assert recorder.state_bytes == len(restored.emitted or b"") + len(machines[2].emitted or b"")


BOOK = parse_segment_book(
    json.dumps(
        {
            "segments": {
                "never_bought": {"when": {"not": {"exists": "last_purchase_ms"}}},
                "no_views": {"when": {"field": "counts.view", "op": "==", "value": 0}},
                "carted_today": {
                    "when": {"count": "add_to_cart", "window": "24h", "op": ">", "value": 0}
                },
                "spender": {"when": {"window_spend": "7d", "op": ">=", "value": 100}},
                "refunder": {"when": {"field": "refunded", "op": ">", "value": 0}},
                "recent": {"when": {"since": "last_seen_ms", "op": "<", "value": "1h"}},
                "shoes": {"when": {"top_category": "shoes"}},
            },
            "rfm": {
                "recency_days": [1, 2, 4, 8],
                "frequency": [1, 2, 3, 4],
                "monetary": [10, 50, 100, 200],
            },
        }
    )
)


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_testing_only_what_an_event_can_move_gives_the_full_evaluation(seed: int) -> None:
    apps = Applications(BOOK, PARAMS.windows, RiskParams())
    machine = UserMachine(MachineSettings(PARAMS, lambda: apps, dim=4), Ports(vectors=_Ready()))
    for event in events(seed, 300):
        machine.receive([event], now_ms=0)
        state = machine.state
        assert state is not None
        profile = state.profile
        full = evaluate(BOOK, profile, PARAMS.windows, profile.last_seen_ms)
        assert set(profile.segments) == full, event
        assert profile.rfm == profile_rfm(profile, BOOK.rfm, profile.last_seen_ms)  # type: ignore[arg-type]


class _Ready:
    def vector(self, text: str, now_ms: int) -> np.ndarray:
        return np.ones(4, np.float32)

    def due_ms(self, now_ms: int = 0) -> int | None:
        return None


@pytest.mark.parametrize("book", [BOOK, APPS.segments], ids=["test-book", "default-book"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_asking_only_what_an_event_can_move_gives_the_same_transitions(
    book: SegmentBook, seed: int
) -> None:
    """After an event, the machine asks only the timed conditions the event's type can move
    when the next check is due, keeping the earlier answer of the others. Against a machine
    that asks every condition every time (its book is new at each call): the same
    transitions at the same times, and a check never later than the full answer."""
    apps = Applications(book, PARAMS.windows, RiskParams())
    asks_only = UserMachine(MachineSettings(PARAMS, lambda: apps, dim=4), Ports(vectors=_Ready()))
    asks_all = UserMachine(
        MachineSettings(PARAMS, lambda: replace(apps, segments=copy.copy(book)), dim=4),
        Ports(vectors=_Ready()),
    )
    rng = random.Random(seed)
    seen: list[list[SegmentTransition]] = [[], []]
    watermark = T0
    for event in events(seed, 300):
        for machine, out in zip((asks_only, asks_all), seen, strict=True):
            out += [
                o for o in machine.receive([event], now_ms=0) if isinstance(o, SegmentTransition)
            ]
        assert asks_all.due == 0 or 0 < asks_only.due <= asks_all.due, event
        watermark = max(watermark, event.ts_ms - rng.choice((0, DAY_MS, 3 * DAY_MS)))
        for machine, out in zip((asks_only, asks_all), seen, strict=True):
            out += [o for o in machine.on_time(0, watermark) if isinstance(o, SegmentTransition)]
    assert seen[0] == seen[1] and any(t.event_id is None for t in seen[0])
