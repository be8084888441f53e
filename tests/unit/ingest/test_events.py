"""Validation of incoming events: every bad message becomes a dead letter with its reason."""

from __future__ import annotations

import json

import pytest

from operators.ingest import DeadLetter, Event, duplicate_of, parse_event

BASE = {"event_id": "e1", "user_id": "u1", "ts": 1_714_564_800_000, "type": "view", "item_id": "i1"}


def message(**changes: object) -> bytes:
    body = {**BASE, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def utf8_message(**changes: object) -> bytes:
    """Like :func:`message`, with non-ASCII characters as UTF-8 rather than ``\\u`` escapes."""
    body = {**BASE, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False).encode()


def with_member(member: bytes) -> bytes:
    """A valid message with one more ``"name": value`` member, given as raw bytes."""
    return message()[:-1] + b", " + member + b"}"


# Invalid UTF-8 anywhere makes a message invalid JSON, even where the field is ignored.
NOT_UTF8 = [
    with_member(b'"x\xff": 1'),  # in an unknown field's name
    with_member(b'"x": "\xfe"'),  # in an unknown field's value
    with_member(b'"x": [{"y": ["a\x80"]}]'),  # a lone continuation byte, nested
    with_member(b'"x": "\xc0\x80"'),  # an overlong NUL
    with_member(b'"x": "\xed\xa0\x80"'),  # a UTF-16 surrogate encoded as UTF-8
    with_member(b'"x": "\xf4\x90\x80\x80"'),  # beyond U+10FFFF
    with_member(b'"x": "\xe4\xb8"'),  # a truncated sequence
    message(type="view\udcff").replace(b"\\udcff", b"\xff"),
]

# Not JSON, though a field before the fault is also wrong: the decoder reads front to back.
NOT_JSON_BEYOND_A_BAD_FIELD = [
    message(price=-1.0)[:-3],  # truncated
    with_member(b'"x": "a\x00b"').replace(b'"e1"', b"null"),  # a raw control character
    with_member(b'"x": NaN').replace(b'"view"', b'"teleport"'),
    message(rating=7) + b" trailing",
    b"[1, 2",
]

# C1 controls (U+0080-U+009F), sent as UTF-8 or as JSON escapes, in ids and labels.
C1_CONTROLS = [
    make(**{name: f"a{char}b"})
    for name in ("event_id", "user_id", "item_id", "category", "brand")
    for char in ("\x80", "\x85", "\x9f")
    for make in (message, utf8_message)
]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (message(event_id=None), "missing_field"),
        (message(item_id=None), "missing_field"),
        (message(type="refund"), "missing_field"),  # a refund without its amount
        (message(type="search", item_id=None, text="   "), "missing_field"),
        (message(type="teleport"), "unknown_type"),
        (message(price=-1.0), "invalid_field"),
        (message(price="12"), "invalid_field"),
        (message(quantity=0), "invalid_field"),
        (message(rating=6), "invalid_field"),
        (message(text="x" * 2001), "invalid_field"),
        (message(user_id=""), "invalid_field"),
        (message(ts=1_714_564_800), "bad_timestamp"),
        (message(ts="yesterday"), "bad_timestamp"),
        (message(ts="2024-05-01T12:00:00"), "bad_timestamp"),
        (message(ts=None), "missing_field"),
        (b'{"pad": "' + b"x" * 20_000 + b'"}', "too_large"),
        (b'{"deep": ' + b"[" * 3000 + b"]" * 3000 + b"}", "invalid_json"),
        (message(user_id="\udcff").replace(b'"\\udcff"', b'"\xff"'), "invalid_json"),
        (message(user_id=10**30), "invalid_field"),
        (message(user_id="   "), "invalid_field"),
        (message(item_id="a\u0000b"), "invalid_field"),
        (message(ts="20240501T120000Z"), "bad_timestamp"),
        (message(ts="2024-W18-3T12:00:00Z"), "bad_timestamp"),
        (message(ts="2024-05-01 12:00:00Z"), "bad_timestamp"),
        (message(ts="2024-02-30T12:00:00Z"), "bad_timestamp"),
        (message(ts="9999-12-31T23:59:59-14:00"), "bad_timestamp"),
        (message(type="chargeback", ref_event_id="p1", ref_ts="last week"), "bad_timestamp"),
        (message(type="chargeback", ref_event_id="p1", ref_ts=True), "bad_timestamp"),
        (message(ref_ts=1_714_564_800_001), "bad_timestamp"),  # after the event it names
        *((raw, "invalid_json") for raw in NOT_UTF8),
        *((raw, "invalid_json") for raw in NOT_JSON_BEYOND_A_BAD_FIELD),
        *((raw, "invalid_field") for raw in C1_CONTROLS),
    ],
)
def test_rejects_with_reason_and_original_bytes(raw: bytes, reason: str) -> None:
    result = parse_event(raw, key=b"u1", source="events/0/7")
    assert isinstance(result, DeadLetter)
    assert (result.reason, result.original, result.key, result.source) == (
        reason,
        raw,
        b"u1",
        "events/0/7",
    )
    assert result.error


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"type": "view", "item_id": "i1", "quantity": 1}),
        ({"ts": "2024-05-01T12:00:00Z"}, {"ts_ms": 1_714_564_800_000}),
        ({"ts": "2024-05-01T14:00:00+02:00"}, {"ts_ms": 1_714_564_800_000}),
        ({"ts": "2024-05-01t12:00:00.250z"}, {"ts_ms": 1_714_564_800_250}),
        (
            {"user_id": "用户 7", "item_id": 2**63 - 1},
            {"user_id": "用户 7", "item_id": str(2**63 - 1)},
        ),
        ({"user_id": 42, "item_id": 7}, {"user_id": "42", "item_id": "7"}),
        ({"type": "search", "item_id": None, "text": "  red shoes "}, {"text": "red shoes"}),
        ({"type": "purchase", "price": 0.0, "quantity": 3}, {"price": 0.0, "quantity": 3}),
        ({"type": "purchase"}, {"type": "purchase", "price": None}),  # Taobao logs have no price
        ({"type": "complaint", "item_id": None, "text": "late"}, {"type": "complaint"}),
        ({"type": "login", "item_id": None, "future_field": [1]}, {"type": "login"}),
        ({"brand": "Ä\xa0Zürich"}, {"brand": "Ä\xa0Zürich"}),  # U+00A0 is just past C1
        ({"session_id": "s\x85", "text": "a\x85b"}, {"session_id": "s\x85", "text": "a\x85b"}),
        (
            {"type": "chargeback", "ref_event_id": "p1", "ref_ts": "2024-04-24T12:00:00Z"},
            {"ref_event_id": "p1", "ref_ts_ms": 1_714_564_800_000 - 7 * 86_400_000},
        ),
        ({"type": "chargeback", "ref_event_id": "p1"}, {"ref_ts_ms": None}),  # not known
    ],
)
def test_accepts_valid_events(changes: dict[str, object], expected: dict[str, object]) -> None:
    raw = message(**changes)
    event = parse_event(raw, ingest_ms=5)
    assert isinstance(event, Event)
    assert {k: getattr(event, k) for k in expected} == expected
    assert (event.raw, event.ingest_ms) == (raw, 5)


def test_accepts_str_lines_like_file_sources_give() -> None:
    assert isinstance(parse_event(message().decode()), Event)


def test_accepts_utf8_everywhere_unknown_fields_included() -> None:
    raw = utf8_message(brand="Ä\xa0Zürich", **{"未来_€": ["é", {"😀": "中"}]})
    assert not raw.isascii()
    event = parse_event(raw)
    assert isinstance(event, Event)
    assert event.brand == "Ä\xa0Zürich"


def test_a_str_that_is_not_unicode_text_is_dead_lettered_not_raised() -> None:
    line = message(item_id="\udcff").decode().replace("\\udcff", "\udcff")  # a lone surrogate
    dead = parse_event(line)
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.original) == ("invalid_json", line.encode("utf-8", "surrogatepass"))


def test_a_duplicate_is_dead_lettered_with_its_own_origin() -> None:
    event = parse_event(message(), key=b"k1", source="events/2/41")
    assert isinstance(event, Event)
    dead = duplicate_of(event)
    assert (dead.reason, dead.original, dead.key, dead.source) == (
        "duplicate_event",
        message(),
        b"k1",
        "events/2/41",
    )
