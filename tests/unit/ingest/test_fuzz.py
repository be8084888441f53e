"""Hostile input, generated: whatever the bytes, validation never raises and follows the README.

Each message is a valid event broken in one or more ways (a field of the wrong type or out of
range, NaN, a duplicate or escaped key, an unknown field of binary junk, control, bidi,
zero-width or surrogate characters, overlong UTF-8, deep nesting, truncation, a huge string),
JSON that is not an object, or random bytes. :func:`parse_event` must return an
:class:`Event` that keeps the documented invariants, or a :class:`DeadLetter` with a reason
code and the original bytes; and, judged by an independent reading of the README's rules
(Python's own JSON parser, ``unicodedata``), accept exactly the messages the README accepts
and reject the others with one of the reasons that apply. The runs are derandomized, so CI
sees the same examples every time.
"""

from __future__ import annotations

import base64
import json
import math
import re
import unicodedata
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from operators.ingest import (
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    MAX_TS_MS,
    MIN_TS_MS,
    REQUIRED_FIELDS,
    DeadLetter,
    Event,
    RejectReason,
    parse_event,
    parse_timestamp_ms,
)
from tests.flow.test_flow import run_flow

FUZZ_EXAMPLES = 10_000
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The reasons parse_event gives; the others come from later steps (duplicates, ...).
PARSE_REASONS = {
    RejectReason.INVALID_JSON.value,
    RejectReason.NOT_AN_OBJECT.value,
    RejectReason.TOO_LARGE.value,
    RejectReason.MISSING_FIELD.value,
    RejectReason.UNKNOWN_TYPE.value,
    RejectReason.INVALID_FIELD.value,
    RejectReason.BAD_TIMESTAMP.value,
}
INT64 = (-(2**63), 2**63 - 1)
COMMON = ("event_id", "user_id", "ts", "type")
OPTIONAL = ("item_id", "category", "brand", "price", "quantity", "text", "rating", "ref_event_id")
FREE_STRINGS = {"session_id": 128, "device_id": 128, "channel": 128, "ip": 64}
KNOWN = frozenset((*COMMON, *OPTIONAL, *FREE_STRINGS, "ref_ts"))

# --- an independent reading of the README's rules ------------------------------------------


def is_label(value: object) -> bool:
    """An id, category or brand: 1-128 characters, not blank, no control characters (Cc)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and value.strip() != ""
        and not any(unicodedata.category(c) == "Cc" for c in value)
    )


def is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def is_short(value: object, most: int) -> bool:
    """A free string (session, device, channel, IP): absent, or at most ``most`` characters."""
    return value is None or (isinstance(value, str) and len(value) <= most)


def is_id(value: object) -> bool:
    return is_label(value) or is_int(value, *INT64)


def timestamp_ms(value: object) -> int | None:
    if type(value) is int:
        return value if MIN_TS_MS <= value < MAX_TS_MS else None
    # RFC 3339's fine print is pinned by tests/unit/ingest/test_events.py.
    if isinstance(value, str):
        try:
            return parse_timestamp_ms(value)
        except Exception:
            return None
    return None


def field_violations(doc: dict[str, Any]) -> set[str]:
    """The README's reasons that apply to a decoded object; empty when it must be accepted."""
    found = {"missing_field" for name in COMMON if name not in doc}
    if "event_id" in doc and not is_label(doc["event_id"]):
        found.add("invalid_field")
    if "user_id" in doc and not is_id(doc["user_id"]):
        found.add("invalid_field")
    if "ts" in doc and timestamp_ms(doc["ts"]) is None:
        found.add("bad_timestamp")
    if doc.get("ref_ts") is not None:  # a time like ts, and not after it
        ref_ms, ts_ms = timestamp_ms(doc["ref_ts"]), timestamp_ms(doc.get("ts"))
        if ref_ms is None or (ts_ms is not None and ref_ms > ts_ms):
            found.add("bad_timestamp")
    kind = doc.get("type")
    if "type" in doc and not (isinstance(kind, str) and kind in EVENT_TYPES):
        found.add("unknown_type")
    value = {name: doc.get(name) for name in (*OPTIONAL, *FREE_STRINGS)}  # null = absent
    price = value["price"]
    valid = {
        "item_id": value["item_id"] is None or is_id(value["item_id"]),
        "category": value["category"] is None or is_label(value["category"]),
        "brand": value["brand"] is None or is_label(value["brand"]),
        "price": price is None
        or (type(price) in (int, float) and math.isfinite(price) and 0 <= price <= 10**7),
        "quantity": value["quantity"] is None or is_int(value["quantity"], 1, 10_000),
        "text": value["text"] is None
        or (isinstance(value["text"], str) and len(value["text"]) <= MAX_TEXT_CHARS),
        "rating": value["rating"] is None or is_int(value["rating"], 1, 5),
        "ref_event_id": value["ref_event_id"] is None or is_label(value["ref_event_id"]),
        **{name: is_short(value[name], n) for name, n in FREE_STRINGS.items()},
    }
    if not all(valid.values()):
        found.add("invalid_field")
    if isinstance(kind, str) and kind in EVENT_TYPES:
        text = value["text"]
        present = {
            "item_id": value["item_id"] is not None,
            "price": price is not None,
            "text": isinstance(text, str) and text.strip() != "",
            "ref_event_id": value["ref_event_id"] is not None,
        }
        if not all(present[name] for name in REQUIRED_FIELDS[kind] if valid[name]):
            found.add("missing_field")
    return found


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers which keys it saw more than once."""

    duplicated: frozenset[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _Object:
        obj = cls(pairs)
        obj.duplicated = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(digits: str) -> int:
    """Integers past 40 digits are out of every documented range; spare int() the work."""
    if len(digits) <= 40:
        return int(digits)
    return -(10**40) if digits.startswith("-") else 10**40


def _has_surrogate(doc: object) -> bool:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def readme_verdict(data: bytes) -> tuple[set[str], _Object | None] | None:
    """The reasons the README gives for rejecting ``data`` (none: accept) and its object.

    ``None`` where the README does not decide: nesting deeper than Python's own parser goes,
    or a known field sent twice (the decoder checks every copy; the README is silent).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        return {"too_large"}, None
    try:
        doc = json.loads(
            data.decode(),
            object_pairs_hook=_Object.from_pairs,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
        )
    except RecursionError:
        return None
    except ValueError:  # not UTF-8, not JSON, NaN or Infinity
        return {"invalid_json"}, None
    if _has_surrogate(doc):  # "\ud800" escapes no UTF-8 text can carry
        return {"invalid_json"}, None
    if not isinstance(doc, _Object):
        return {"not_an_object"}, None
    if doc.duplicated & KNOWN:
        return None
    return field_violations(doc), doc


def assert_documented_event(event: Event) -> None:
    """What the README promises about every event the flow goes on with."""
    assert is_label(event.event_id)
    assert is_label(event.user_id) or re.fullmatch(r"-?(0|[1-9][0-9]*)", event.user_id)
    assert event.item_id is None or is_label(event.item_id)
    assert event.category is None or is_label(event.category)
    assert event.brand is None or is_label(event.brand)
    assert MIN_TS_MS <= event.ts_ms < MAX_TS_MS
    assert event.type in EVENT_TYPES
    assert event.price is None or (math.isfinite(event.price) and 0 <= event.price <= 10**7)
    assert 1 <= event.quantity <= 10_000
    assert event.rating is None or 1 <= event.rating <= 5
    assert event.text is None or 0 < len(event.text) <= MAX_TEXT_CHARS
    assert event.text is None or event.text == event.text.strip()
    assert all(is_short(getattr(event, name), most) for name, most in FREE_STRINGS.items())
    assert event.ref_event_id is None or is_label(event.ref_event_id)
    assert event.ref_ts_ms is None or MIN_TS_MS <= event.ref_ts_ms <= event.ts_ms
    present = {
        "item_id": event.item_id,
        "price": event.price,
        "text": event.text,
        "ref_event_id": event.ref_event_id,
    }
    assert all(present[name] is not None for name in REQUIRED_FIELDS[event.type])
    names = ("event_id", "user_id", "item_id", "category", "brand", "text", "ref_event_id")
    for name in (*names, *FREE_STRINGS):
        value = getattr(event, name)
        assert value is None or isinstance(value.encode(), bytes)  # no lone surrogates


def assert_event_is(event: Event, doc: dict[str, Any]) -> None:
    """The event carries the message's own values (the last copy of a repeated key)."""
    item_id = doc.get("item_id")
    text = doc.get("text")
    assert (event.event_id, event.user_id, event.type) == (
        doc["event_id"],
        str(doc["user_id"]),
        doc["type"],
    )
    assert event.ts_ms == timestamp_ms(doc["ts"])
    ref_ts = doc.get("ref_ts")
    assert event.ref_ts_ms == (None if ref_ts is None else timestamp_ms(ref_ts))
    assert event.item_id == (None if item_id is None else str(item_id))
    assert event.text == (text.strip() or None if isinstance(text, str) else None)
    assert event.quantity == (doc.get("quantity") or 1)
    for name in ("category", "brand", "price", "rating", "ref_event_id", *FREE_STRINGS):
        assert getattr(event, name) == doc.get(name), name


def check(raw: bytes | str, key: bytes | None, source: str) -> Event | DeadLetter:
    """Parse one hostile message and check the result against the README."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    result = parse_event(raw, key=key, source=source, ingest_ms=7)
    verdict = readme_verdict(data)
    if isinstance(result, DeadLetter):
        assert result.reason in PARSE_REASONS
        assert isinstance(result.error, str) and result.error
        assert (result.original, result.key, result.source) == (data, key, source)
        assert verdict is None or result.reason in verdict[0], (verdict, result)
    else:
        assert isinstance(result, Event), result
        assert (result.raw, result.key, result.source, result.ingest_ms) == (data, key, source, 7)
        assert_documented_event(result)
        assert verdict is None or not verdict[0], (verdict, result)
        doc = json.loads(data, parse_int=_bounded_int)
        assert_event_is(result, doc)
    return result


# --- hostile messages --------------------------------------------------------------------
# Strategies are built once, here: building them inside the composites costs more than drawing.

NOTABLE = (
    *"\x00\x01\t\n\r\x1b\x1f\x7f\x80\x85\x9f\xa0\xad",  # C0, DEL, C1, NBSP, soft hyphen
    *"\u200b\u200c\u200d\u2028\u2029\u2060\ufeff",  # zero-width, separators, BOM
    *"\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",  # bidi
    *"\ud800\udbff\udc00\udfff",  # lone surrogates
    *"\ufffd\uffff\U0010ffff\U0001f600\u0301中é ",
    *'"\\/{}[]:,',
)
chars = st.one_of(st.sampled_from(NOTABLE), st.characters(codec="ascii"), st.characters())
hostile_strings = st.one_of(
    st.text(chars, max_size=8),
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(["x", "é", "中", " ", "\x85"]),
        st.sampled_from([127, 128, 129, 2000, 2001, 17_000]),
    ),
)
labels = st.one_of(
    st.sampled_from(["u0", "u1", "u2", "用户 7", "Ä\xa0Zürich", "x" * 128, "0", "-5"]),
    st.text(st.characters(codec="ascii", min_codepoint=33), min_size=1, max_size=6),
)
numbers = st.one_of(
    st.sampled_from([0, -1, 1, 5, 6, 10_000, 10_001, *INT64, INT64[0] - 1, INT64[1] + 1, 10**30]),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 1e7, 1e7 + 1, 5e-324, 1e308]),
    st.integers(),
    st.floats(),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_strings)
hostile_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(hostile_strings, scalars, max_size=2),
)
timestamps = st.one_of(
    st.integers(MIN_TS_MS, MAX_TS_MS - 1),
    st.sampled_from([MIN_TS_MS - 1, MIN_TS_MS, MAX_TS_MS - 1, MAX_TS_MS, 1_714_564_800]),
    st.sampled_from(
        [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00.250z",
            "2024-05-01T14:00:00+02:00",
            "2024-05-01T12:00:00",
            "1999-12-31T23:59:59Z",
            "2024-02-30T12:00:00Z",
        ]
    ),
)
VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "item_id": st.one_of(labels, st.integers(*INT64)),
    "category": labels,
    "brand": labels,
    "price": st.floats(0, 10**7),
    "quantity": st.integers(1, 10_000),
    "text": st.sampled_from(["red shoes", "  late ", "很好 great", "x" * MAX_TEXT_CHARS]),
    "rating": st.integers(1, 5),
    "ref_event_id": labels,
    "ref_ts": timestamps,
    "session_id": st.text(chars, max_size=4),
    "device_id": st.sampled_from(["d-1", "", "\x00", "\x85", "x" * 128, "x" * 129]),
    "channel": st.sampled_from(["app", "", "\u202e"]),
    "ip": st.sampled_from(["10.0.0.1", "::1", "x" * 64, "x" * 65]),
}
FIELDS = (*COMMON, *VALID_VALUES)
# Byte sequences no UTF-8 decoder may accept.
NOT_UTF8 = (
    *(b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3", b"\xe4\xb8"),  # stray and truncated
    *(b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xf0\x80\x80\x80"),  # overlong
    *(b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"),
)
junk_bytes = st.one_of(
    st.binary(max_size=8),
    st.lists(st.sampled_from(NOT_UTF8), min_size=1, max_size=3).map(b"".join),
    st.text(chars, max_size=6).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
event_types = st.sampled_from(EVENT_TYPES)
user_ids = st.one_of(labels, st.integers(-3, 3))
extra_fields = st.lists(st.sampled_from(tuple(VALID_VALUES)), max_size=3)
shapes = st.sampled_from(("event", "event", "event", "event", "other_json", "bytes"))
random_bytes = st.one_of(st.binary(max_size=64), junk_bytes)
up_to_two = st.integers(0, 2)
changes = st.sampled_from(("set", "set", "delete", "unknown"))
field_names = st.sampled_from(FIELDS)
separators = st.sampled_from([None, (",", ":")])
mutations = st.sampled_from(
    [
        *("unknown_junk", "unknown_junk", "duplicate", "escaped_key", "deep"),
        *("pad", "truncate", "insert", "replace", "wrap"),
    ]
)
junk_holders = st.sampled_from([b'"%s"', b'["%s"]', b'{"k": {"%s": 1}}', b"%s"])
depths = st.sampled_from([1, 40, 300, 6000])  # far below, or far beyond, any parser's limit
nestings = st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])
pad_overshoot = st.sampled_from([-1, 0, 1, 5000])
insertions = st.one_of(junk_bytes, st.sampled_from([b"NaN", b"-Infinity", b"\\u0085", b",", b'"']))
one_byte = st.binary(min_size=1, max_size=1)
wrappings = st.sampled_from(
    [(b"\xef\xbb\xbf", b""), (b" \n\t", b" \r\n"), (b"[", b"]"), (b"", b"x"), (b"", b"{}")]
)
keys = st.sampled_from([None, b"u1", b"\xff"])
sources = st.sampled_from(["", "events/0/7"])


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(event_types)
    event: dict[str, Any] = {
        "event_id": draw(labels),
        "user_id": draw(user_ids),
        "ts": draw(timestamps),
        "type": kind,
    }
    for name in (*REQUIRED_FIELDS[kind], *draw(extra_fields)):
        event[name] = draw(VALID_VALUES[name])
    return event


def member(name: bytes, value: bytes) -> bytes:
    return b'"' + name + b'": ' + value


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """One change to a serialized message that no JSON serializer would make."""
    at = draw(st.integers(0, len(data)))
    body = data[:-1] if data.endswith(b"}") else data
    mutation = draw(mutations)
    if mutation == "unknown_junk":  # binary junk in an unknown field's name or value
        name, value = draw(junk_bytes), draw(junk_bytes)
        return body + b", " + member(b"x" + name, draw(junk_holders).replace(b"%s", value)) + b"}"
    if mutation == "duplicate":
        value = json.dumps(draw(hostile_values)).encode("utf-8", "surrogatepass")
        return body + b", " + member(draw(field_names).encode(), value) + b"}"
    if mutation == "escaped_key":  # event_id spelt event\u005fid: the same key
        name = draw(field_names).encode()
        return data.replace(b'"' + name + b'"', b'"' + name.replace(b"_", b"\\u005f") + b'"', 1)
    if mutation == "deep":
        depth, (opener, closer) = draw(depths), draw(nestings)
        return body + b", " + member(b"deep", opener * depth + b"1" + closer * depth) + b"}"
    if mutation == "pad":  # a string that takes the message to around 16 KiB
        pad = MAX_MESSAGE_BYTES + draw(pad_overshoot) - len(body) - len(b', "pad": ""}')
        return body + b", " + member(b"pad", b'"' + b"p" * max(0, pad) + b'"') + b"}"
    if mutation == "truncate":
        return data[:at]
    if mutation == "insert":
        return data[:at] + draw(insertions) + data[at:]
    if mutation == "replace":
        return data[:at] + draw(one_byte) + data[at + 1 :]
    prefix, suffix = draw(wrappings)
    return prefix + data + suffix


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    """A valid event broken at the level of values, then of bytes; or not an event at all."""
    shape = draw(shapes)
    if shape == "bytes":
        return draw(random_bytes)
    if shape == "other_json":
        doc: Any = draw(hostile_values)
    else:
        doc = draw(valid_events())
        for _ in range(draw(up_to_two)):
            change = draw(changes)
            name = draw(hostile_strings) if change == "unknown" else draw(field_names)
            if change == "delete":
                doc.pop(name, None)
            else:
                doc[name] = draw(hostile_values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=draw(separators))
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(up_to_two) if shape == "event" else 0):
        data = draw(byte_mutations(data))
    return data


@st.composite
def inputs(draw: st.DrawFn) -> tuple[bytes | str, bytes | None, str]:
    """A message as Kafka gives it (bytes), or a line as a str (lone surrogates and all)."""
    data = draw(hostile_messages())
    as_str = draw(st.integers(0, 4)) == 0
    raw = data.decode("utf-8", "surrogateescape") if as_str else data
    return raw, draw(keys), draw(sources)


def test_parse_event_never_raises_and_follows_the_readme() -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(inputs())
    def parse(message: tuple[bytes | str, bytes | None, str]) -> None:
        result = check(*message)
        seen[result.reason if isinstance(result, DeadLetter) else "event"] += 1

    parse()
    assert seen.total() >= FUZZ_EXAMPLES
    assert set(seen) == PARSE_REASONS | {"event"}, seen  # every outcome was reached


FLOW_MESSAGES = 1_000


# Found by the flow run below; the fix belongs to operators/profile/.
def _original(letter: dict[str, Any]) -> bytes:
    if "original" in letter:
        return str(letter["original"]).encode()
    return base64.b64decode(letter["original_b64"])


def test_an_event_decades_before_the_users_first_one_does_not_crash_the_flow() -> None:
    lines = [
        json.dumps({"event_id": "e1", "user_id": "u1", "ts": MAX_TS_MS - 1, "type": "login"}),
        json.dumps(
            {"event_id": "e2", "user_id": "u1", "ts": MIN_TS_MS, "type": "search", "text": "red"}
        ),
    ]
    deltas, dead = run_flow(lines)
    assert ([e for d in deltas for e in d.event_ids], dead) == (["e1", "e2"], [])


def test_the_flow_passes_on_every_hostile_message_exactly_once() -> None:
    messages: list[bytes] = []

    @settings(FUZZ, max_examples=FLOW_MESSAGES, phases=[Phase.generate])
    @given(hostile_messages())
    def collect(message: bytes) -> None:  # one batch drawn message by message: lists this big
        messages.append(message)  # overflow Hypothesis's buffer and take minutes to shrink

    collect()
    assert len(messages) >= FLOW_MESSAGES
    lines = [(raw, f"fuzz:{i}") for i, raw in enumerate(messages)]
    deltas, dead = run_flow(lines)
    letters = {d["source"]: d for d in dead}
    assert len(letters) == len(dead)  # no message is dead-lettered twice
    accepted = []
    for raw, origin in lines:
        parsed = parse_event(raw)
        letter = letters.pop(origin, None)
        if isinstance(parsed, DeadLetter):
            assert letter is not None, (origin, parsed)
            assert letter["reason"] == parsed.reason
        elif letter is None:
            accepted.append((parsed.user_id, parsed.event_id))
            continue
        else:  # valid, but a later step refused it (a duplicate, say): the event, its IP
            # and device id pseudonymised (operators/ingest/privacy.py), is what goes to the DLQ
            assert letter["reason"] in {r.value for r in RejectReason} - PARSE_REASONS
            refused = parse_event(_original(letter))
            assert isinstance(refused, Event), (origin, letter)
            assert (refused.user_id, refused.event_id) == (parsed.user_id, parsed.event_id)
            continue
        assert _original(letter) == raw
    assert letters == {}
    covered = Counter((d.user_id, event_id) for d in deltas for event_id in d.event_ids)
    assert covered == Counter(accepted)
