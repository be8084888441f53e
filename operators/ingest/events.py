"""Parse and validate behaviour events; turn bad input into dead letters.

Every message that enters profilestream passes through :func:`parse_event`, which either
returns a validated :class:`Event` or a :class:`DeadLetter` carrying the original bytes, a
reason code and the error text. Whatever the bytes, it returns one of the two and never
raises, so bad input cannot crash the flow; the dataflow routes dead letters to the DLQ
topic (or file) and counts them by reason.

>>> event = parse_event(b'{"event_id": "e1", "user_id": "u1", "ts": 1700000000000, '
...                     b'"type": "view", "item_id": "i9", "category": "shoes"}')
>>> event.user_id, event.type, event.ts_ms
('u1', 'view', 1700000000000)
>>> parse_event(b'{"event_id": "e2", "user_id": "u1", "ts": 1, "type": "login"}').reason
'bad_timestamp'
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Final, Literal, get_args

import msgspec
from msgspec import Meta

EventType = Literal[
    "search",
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "favorite",
    "purchase",
    "refund",
    "review",
    "complaint",
    "share",
    "login",
    "logout",
    "ad_click",
    "chargeback",
    "delete_user",
]
EVENT_TYPES: Final[tuple[str, ...]] = get_args(EventType)

#: Fields each event type must carry beyond the common ones.
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "search": ("text",),
    "view": ("item_id",),
    "click": ("item_id",),
    "add_to_cart": ("item_id",),
    "remove_from_cart": ("item_id",),
    "favorite": ("item_id",),
    "purchase": ("item_id",),  # price optional: many logs (Taobao's) do not carry it
    "refund": ("item_id", "price"),
    "review": ("item_id", "text"),
    "complaint": ("text",),
    "share": ("item_id",),
    "login": (),
    "logout": (),
    "ad_click": ("item_id",),
    # A card issuer's chargeback or an analyst's verdict: the purchase was fraud.
    "chargeback": ("item_id", "ref_event_id"),
    "delete_user": (),
}

#: The watermark before anything was read: earlier than any event.
NO_WATERMARK: Final = -(2**62)
MAX_MESSAGE_BYTES: Final = 16_384
MAX_TEXT_CHARS: Final = 2_000
# Event times outside [2000-01-01, 2100-01-01) are bugs upstream (seconds sent as ms, zeros).
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000


class RejectReason(enum.StrEnum):
    """Why a message went to the dead-letter queue; the value is the wire reason code."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    BAD_TIMESTAMP = "bad_timestamp"
    DUPLICATE_EVENT = "duplicate_event"
    SOURCE_ERROR = "source_error"
    ERASED_USER = "erased_user"  # a re-sent event from before its user's deletion or expiry
    BEYOND_DEDUPE_MEMORY = "beyond_dedupe_memory"  # too old to tell from a forgotten duplicate


# Ids and labels: 1-128 characters, not all whitespace, and no control characters (Unicode
# category Cc: C0 U+0000-U+001F, DEL and C1 U+007F-U+009F), however the JSON spells them.
Label = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^(?=.*\S)[^\x00-\x1f\x7f-\x9f]+\Z")
]
IntId = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # a 64-bit integer id, as producers have
Short = Annotated[str, Meta(max_length=128)]
# RFC 3339 date-time: a full date, "T" (or "t"), a time, and a zone ("Z" or +hh:mm).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


class _WireEvent(msgspec.Struct):
    """The JSON shape on the wire; unknown fields are ignored for forward compatibility."""

    event_id: Label
    user_id: Label | IntId
    ts: int | str
    type: EventType
    item_id: Label | IntId | None = None
    category: Label | None = None
    brand: Label | None = None
    price: Annotated[float, Meta(ge=0, le=10_000_000)] | None = None
    quantity: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    text: Annotated[str, Meta(max_length=MAX_TEXT_CHARS)] | None = None
    rating: Annotated[int, Meta(ge=1, le=5)] | None = None
    session_id: Short | None = None
    device_id: Short | None = None
    ip: Annotated[str, Meta(max_length=64)] | None = None
    channel: Short | None = None
    ref_event_id: Label | None = None
    ref_ts: int | str | None = None


class Event(msgspec.Struct, frozen=True, gc=False):
    """A validated behaviour event. Times are integer epoch milliseconds (``*_ms``).

    ``raw``, ``key`` and ``source`` keep the original message and where it came from, so a
    later step (de-duplication) can still dead-letter it verbatim; ``ingest_ms`` is the
    wall-clock time it entered the system, used for the event-to-delta latency metric.
    ``watermark_ms`` is the watermark its input partition had reached when it was read
    (:class:`operators.ingest.event_clock.PartitionClock`): an event older than that is late.
    ``replayed`` says it was read again after a restart, from the part of the input the run
    before may have read (and sent deltas of) already.
    """

    event_id: str
    user_id: str
    ts_ms: int
    type: str
    item_id: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    quantity: int = 1
    text: str | None = None
    rating: int | None = None
    session_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    channel: str | None = None
    ingest_ms: int = 0
    raw: bytes = b""
    key: bytes | None = None
    source: str = ""
    watermark_ms: int = NO_WATERMARK
    replayed: bool = False
    #: The event this one is about (a chargeback's purchase) and its time, when the sender
    #: knows it. Last: snapshots hold events.
    ref_event_id: str | None = None
    ref_ts_ms: int | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected message: original bytes, reason code, error text and where it came from."""

    reason: str
    error: str
    original: bytes
    key: bytes | None = None
    source: str = ""


class _Rejected(Exception):
    def __init__(self, reason: RejectReason, error: str) -> None:
        super().__init__(error)
        self.reason = reason


_decoder = msgspec.json.Decoder(_WireEvent)
_json_syntax = msgspec.json.Decoder(msgspec.Raw)  # checks the syntax, builds nothing


def parse_timestamp_ms(ts: int | str, name: str = "ts") -> int:
    """Convert an epoch-ms integer or an RFC 3339 string (the field ``name``) to epoch
    milliseconds.

    >>> parse_timestamp_ms("2024-05-01T12:00:00Z")
    1714564800000
    >>> parse_timestamp_ms(1714564800000)
    1714564800000
    """
    if isinstance(ts, str):
        if _RFC3339.fullmatch(ts) is None:
            raise _Rejected(
                RejectReason.BAD_TIMESTAMP, f"{name} is not RFC 3339 with a zone: {ts!r}"
            )
        try:
            parsed = datetime.fromisoformat(ts.upper().replace("Z", "+00:00"))
        except ValueError as exc:
            error = f"{name} is not a valid time: {ts!r}"
            raise _Rejected(RejectReason.BAD_TIMESTAMP, error) from exc
        try:
            ms = round(parsed.timestamp() * 1000)
        except (OverflowError, ValueError) as exc:  # year 1 or 9999 shifted past the calendar
            error = f"{name} out of range: {ts!r}"
            raise _Rejected(RejectReason.BAD_TIMESTAMP, error) from exc
    else:
        ms = ts
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        error = f"{name} {ts!r} is outside 2000..2100 (epoch ms)"
        raise _Rejected(RejectReason.BAD_TIMESTAMP, error)
    return ms


def _reason_for(error: msgspec.ValidationError) -> RejectReason:
    message = str(error)
    if message.startswith("Object missing required field"):
        return RejectReason.MISSING_FIELD
    if message.startswith("Expected `object`"):
        return RejectReason.NOT_AN_OBJECT
    if message.endswith("at `$.type`"):
        return RejectReason.UNKNOWN_TYPE
    if message.endswith(("at `$.ts`", "at `$.ref_ts`")):
        return RejectReason.BAD_TIMESTAMP
    return RejectReason.INVALID_FIELD


def _validated(
    wire: _WireEvent, raw: bytes, key: bytes | None, source: str, ingest_ms: int, watermark_ms: int
) -> Event:
    text = wire.text.strip() if wire.text is not None else None
    values = {
        "item_id": wire.item_id,
        "price": wire.price,
        "text": text or None,
        "ref_event_id": wire.ref_event_id,
    }
    for name in REQUIRED_FIELDS[wire.type]:
        if values[name] is None:
            raise _Rejected(
                RejectReason.MISSING_FIELD, f"`{wire.type}` event needs a non-empty `{name}`"
            )
    ts_ms = parse_timestamp_ms(wire.ts)
    ref_ts_ms = None if wire.ref_ts is None else parse_timestamp_ms(wire.ref_ts, "ref_ts")
    if ref_ts_ms is not None and ref_ts_ms > ts_ms:
        raise _Rejected(RejectReason.BAD_TIMESTAMP, "ref_ts is after ts: it names an earlier event")
    return Event(
        event_id=wire.event_id,
        user_id=str(wire.user_id),
        ts_ms=ts_ms,
        type=wire.type,
        item_id=None if wire.item_id is None else str(wire.item_id),
        category=wire.category,
        brand=wire.brand,
        price=wire.price,
        quantity=wire.quantity or 1,
        text=text or None,
        rating=wire.rating,
        session_id=wire.session_id,
        device_id=wire.device_id,
        ip=wire.ip,
        channel=wire.channel,
        ingest_ms=ingest_ms,
        raw=raw,
        key=key,
        source=source,
        watermark_ms=watermark_ms,
        ref_event_id=wire.ref_event_id,
        ref_ts_ms=ref_ts_ms,
    )


def _check_utf8(data: bytes) -> None:
    """Reject anything but strict UTF-8: no overlong forms, surrogates or code points > U+10FFFF."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        raise _Rejected(RejectReason.INVALID_JSON, f"not UTF-8: {exc}") from exc


def _check_json(data: bytes) -> None:
    """Reject a message that is not JSON, though the decoder stopped at a bad field before."""
    try:
        _json_syntax.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _Rejected(RejectReason.INVALID_JSON, f"{type(exc).__name__}: {exc}") from exc


def parse_event(
    raw: bytes | str,
    *,
    key: bytes | None = None,
    source: str = "",
    ingest_ms: int = 0,
    watermark_ms: int = NO_WATERMARK,
) -> Event | DeadLetter:
    """Validate one message; return the :class:`Event` or a :class:`DeadLetter` saying why not.

    ``key`` and ``source`` (topic/partition/offset or file) travel into the dead letter so an
    operator can find and replay the message; ``watermark_ms`` is its partition's watermark
    when it was read (see :class:`Event`). A ``str`` is taken as its UTF-8 bytes; one with
    lone surrogates (not text) is dead-lettered as ``invalid_json`` with them encoded as-is.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    try:
        if len(data) > MAX_MESSAGE_BYTES:
            raise _Rejected(
                RejectReason.TOO_LARGE, f"message is {len(data)} bytes > {MAX_MESSAGE_BYTES}"
            )
        if not data.isascii():
            # The decoder skips unknown fields without looking at their bytes: check them all.
            _check_utf8(data)
        try:
            wire = _decoder.decode(data)
        except msgspec.ValidationError as exc:
            _check_json(data)  # invalid JSON outranks a bad field that comes first
            raise _Rejected(_reason_for(exc), str(exc)) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            # Malformed JSON, or nesting too deep to decode.
            raise _Rejected(RejectReason.INVALID_JSON, f"{type(exc).__name__}: {exc}") from exc
        return _validated(wire, data, key, source, ingest_ms, watermark_ms)
    except _Rejected as rejected:
        return DeadLetter(rejected.reason.value, str(rejected), data, key, source)
    except Exception as exc:
        return DeadLetter(RejectReason.INVALID_FIELD.value, repr(exc), data, key, source)


def duplicate_of(event: Event) -> DeadLetter:
    """Dead-letter an event whose id this user has already sent."""
    error = f"event_id {event.event_id!r} already processed for user {event.user_id!r}"
    return refused(event, RejectReason.DUPLICATE_EVENT, error)


def refused(event: Event, reason: RejectReason, error: str) -> DeadLetter:
    """Dead-letter a valid event the profile step refuses (a duplicate, a re-send after
    erasure, an event too old to de-duplicate), keeping what identifies it: its original
    message, or, where that was dropped (IPs hidden), the event re-encoded."""
    raw = event.raw or wire_form(event)
    return DeadLetter(reason.value, error, raw, event.key, event.source)


_WIRE_FIELDS: Final = (
    "event_id",
    "user_id",
    "type",
    "item_id",
    "category",
    "brand",
    "price",
    "quantity",
    "text",
    "rating",
    "session_id",
    "device_id",
    "ip",
    "channel",
    "ref_event_id",
)
_wire_encoder = msgspec.json.Encoder()


def wire_form(event: Event) -> bytes:
    """The event as an input message again (its fields, ``ts`` in epoch ms; unset ones left
    out): what a refused event's dead letter carries when its original bytes were dropped.

    >>> wire_form(Event("e1", "u1", 1_700_000_000_000, "view", item_id="i1"))
    b'{"event_id":"e1","user_id":"u1","type":"view","item_id":"i1","quantity":1,"ts":1700000000000}'
    """
    fields = {name: getattr(event, name) for name in _WIRE_FIELDS}
    fields["ts"] = event.ts_ms
    fields["ref_ts"] = event.ref_ts_ms
    return _wire_encoder.encode({k: v for k, v in fields.items() if v is not None})


def erased_user(event: Event) -> DeadLetter:
    """Dead-letter an event re-sent from before its user was deleted or expired."""
    error = f"event {event.event_id!r} is from before user {event.user_id!r} was erased"
    return refused(event, RejectReason.ERASED_USER, error)


def beyond_dedupe_memory(event: Event) -> DeadLetter:
    """Dead-letter an event older than every event id its user's profile still remembers."""
    error = (
        f"event {event.event_id!r} is older than user {event.user_id!r}'s de-duplication "
        "memory: it may be a forgotten duplicate"
    )
    return refused(event, RejectReason.BEYOND_DEDUPE_MEMORY, error)
