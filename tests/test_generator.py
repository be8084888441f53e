"""The synthetic event generator: deterministic, realistic, and honest about its bad lines."""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataflow.commands import generator
from dataflow.commands.cli import main
from dataflow.commands.generator import (
    CATEGORIES,
    DUPLICATE_LOOKBACK,
    GeneratedEvent,
    build_catalog,
    generate_events,
    read_catalog,
    write_catalog,
    write_events,
)
from operators.events import DeadLetter, Event, RejectReason, parse_event

N_EVENTS = 30_000
N_USERS = 1_500


@pytest.fixture(scope="module")
def stream() -> list[GeneratedEvent]:
    return list(generate_events(N_EVENTS, N_USERS, seed=7, malformed_rate=0.03))


@pytest.fixture(scope="module")
def parsed(stream: list[GeneratedEvent]) -> list[Event | DeadLetter]:
    return [parse_event(e.line) for e in stream]


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    first = list(generate_events(2_000, 100, seed=3))
    assert first == list(generate_events(2_000, 100, seed=3))
    assert [e.line for e in first] != [e.line for e in generate_events(2_000, 100, seed=4)]


def test_default_catalog_is_the_seeded_one() -> None:
    catalog = build_catalog(generator.DEFAULT_CATALOG_ITEMS, np.random.default_rng(5))
    assert list(generate_events(500, 30, seed=5)) == list(
        generate_events(500, 30, seed=5, catalog=catalog)
    )


@pytest.mark.parametrize(
    ("n_events", "rate"), [(0, 0.01), (1, 0.0), (1, 1.0), (97, 0.01), (1_000, 0.2), (300, 1.0)]
)
def test_yields_exactly_n_events(n_events: int, rate: float) -> None:
    events = list(generate_events(n_events, 10, seed=1, malformed_rate=rate))
    assert len(events) == n_events
    assert sum(e.expected_reason is not None for e in events) == round(n_events * rate)


def test_valid_lines_parse_and_bad_lines_give_their_reason(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    for event, result in zip(stream, parsed, strict=True):
        if event.expected_reason in (None, RejectReason.DUPLICATE_EVENT):
            assert isinstance(result, Event), (event.line, result)
            assert result.user_id == event.user_id
        else:
            assert isinstance(result, DeadLetter), event.line
            assert result.reason == event.expected_reason, (event.line, result.error)
    reasons = {e.expected_reason for e in stream} - {None}
    assert reasons == {
        RejectReason.INVALID_JSON,
        RejectReason.NOT_AN_OBJECT,
        RejectReason.MISSING_FIELD,
        RejectReason.UNKNOWN_TYPE,
        RejectReason.INVALID_FIELD,
        RejectReason.BAD_TIMESTAMP,
        RejectReason.DUPLICATE_EVENT,
    }


def test_lines_are_single_line_utf8(stream: list[GeneratedEvent]) -> None:
    # FileSource reads the file as text, one line per message.
    for event in stream:
        text = event.line.decode("utf-8")
        assert text.strip() and "\n" not in text and "\r" not in text


def test_duplicates_are_prompt_resends_of_users_never_deleted(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    deleted = {p.user_id for p in parsed if isinstance(p, Event) and p.type == "delete_user"}
    valid = [i for i, e in enumerate(stream) if e.expected_reason is None]
    positions = [i for i, e in enumerate(stream) if e.expected_reason == "duplicate_event"]
    assert positions
    for i in positions:
        # The original is one of the last DUPLICATE_LOOKBACK valid lines before the re-send.
        before = valid[max(bisect.bisect_left(valid, i) - DUPLICATE_LOOKBACK, 0) :]
        assert any(stream[j].line == stream[i].line for j in before if j < i)
        assert stream[i].user_id not in deleted


def test_event_ids_are_unique_apart_from_duplicates(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    ids = [
        p.event_id
        for e, p in zip(stream, parsed, strict=True)
        if isinstance(p, Event) and e.expected_reason is None
    ]
    assert len(ids) == len(set(ids))


def test_users_are_zipf_skewed(stream: list[GeneratedEvent]) -> None:
    per_user = Counter(e.user_id for e in stream if e.expected_reason is None)
    top = sum(count for _, count in per_user.most_common(N_USERS // 100))
    assert top / per_user.total() > 0.15  # the top 1% of users: 15x their fair share at least
    assert len(per_user) == N_USERS  # ... and everyone shows up


def test_items_and_queries_repeat(parsed: list[Event | DeadLetter]) -> None:
    events = [p for p in parsed if isinstance(p, Event)]
    views = Counter(e.item_id for e in events if e.type == "view")
    queries = Counter(e.text for e in events if e.type == "search")
    assert views.most_common(1)[0][1] > 20 * views.total() / len(views)
    assert queries.most_common(10)[-1][1] > 50 and len(queries) < queries.total() / 5


def test_english_and_chinese_text(parsed: list[Event | DeadLetter]) -> None:
    texts = [p for p in parsed if isinstance(p, Event) and p.text]
    for kind in ("search", "review"):
        chinese = sum(_has_cjk(e.text or "") for e in texts if e.type == kind)
        english = sum(not _has_cjk(e.text or "") for e in texts if e.type == kind)
        assert chinese > 20 and english > 20, kind
    reviews = [e for e in texts if e.type == "review"]
    assert all(e.rating is not None and 1 <= e.rating <= 5 for e in reviews)


def test_sessions_in_time_order_within_the_span(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    valid = [p for e, p in zip(stream, parsed, strict=True) if e.expected_reason is None]
    times = [p.ts_ms for p in valid if isinstance(p, Event)]
    assert times == sorted(times)
    start = generator.DEFAULT_END_MS - generator.DEFAULT_SPAN_DAYS * generator.DAY_MS
    assert start <= times[0] and times[-1] <= generator.DEFAULT_END_MS + generator.DAY_MS
    assert any(b'"ts":"20' in e.line for e in stream if e.expected_reason is None)  # RFC 3339
    types = Counter(p.type for p in valid if isinstance(p, Event))
    assert types["view"] > types["add_to_cart"] > types["purchase"] > types["refund"] > 0
    assert {"login", "logout", "favorite", "share", "ad_click", "remove_from_cart"} <= set(types)
    sessions = Counter(p.session_id for p in valid if isinstance(p, Event))
    assert 3 < types.total() / len(sessions) < 20


def test_deleted_users_are_not_duplicated_and_may_return(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "DELETE_EVERY", 300)
    stream = list(generate_events(6_000, 100, seed=2, malformed_rate=0.05))
    events = [(e, parse_event(e.line)) for e in stream if e.expected_reason is None]
    deletes = [
        i for i, (_, p) in enumerate(events) if isinstance(p, Event) and p.type == "delete_user"
    ]
    deleted = {events[i][0].user_id for i in deletes}
    assert len(deletes) >= 5
    assert not deleted & {e.user_id for e in stream if e.expected_reason == "duplicate_event"}
    returned = {
        events[i][0].user_id
        for i in deletes
        if any(e.user_id == events[i][0].user_id for e, _ in events[i + 1 :])
    }
    assert returned


def test_catalog() -> None:
    catalog = build_catalog(500, np.random.default_rng(0))
    assert catalog == build_catalog(500, np.random.default_rng(0))
    assert len({i.item_id for i in catalog}) == 500
    assert {i.category for i in catalog} == {c.name for c in CATEGORIES}
    assert {i.lang for i in catalog} == {"en", "zh"}
    assert all(i.price > 0 and i.brand in i.title for i in catalog)
    assert sum(_has_cjk(i.title) for i in catalog) > 100


def test_files_round_trip(tmp_path: Path) -> None:
    catalog = build_catalog(40, np.random.default_rng(1))
    assert write_catalog(tmp_path / "catalog.jsonl", catalog) == 40
    assert read_catalog(tmp_path / "catalog.jsonl") == catalog
    events = list(generate_events(300, 20, seed=1, catalog=catalog))
    assert write_events(tmp_path / "events.jsonl", events) == 300
    with (tmp_path / "events.jsonl").open("rt", encoding="utf-8") as f:
        assert [line.rstrip("\n").encode() for line in f] == [e.line for e in events]


def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, catalog = tmp_path / "e" / "events.jsonl", tmp_path / "catalog.jsonl"
    argv = ["generate", "--events", "500", "--users", "40", "--malformed-rate", "0.1"]
    assert main([*argv, "--out", str(out), "--catalog", str(catalog), "--catalog-items", "60"]) == 0
    assert len(out.read_bytes().splitlines()) == 500
    assert len(read_catalog(catalog)) == 60
    printed = capsys.readouterr().out
    assert "wrote 500 events" in printed and "malformed by reason (50)" in printed
    assert main([*argv, "--out", str(out), "--users", "0"]) == 2
