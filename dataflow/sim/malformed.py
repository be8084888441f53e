"""Bad messages, each labelled with the reason code the parser gives it, and exact re-sends."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any, Final, Literal

import msgspec

from dataflow.sim.sessions import Writer
from dataflow.sim.world import EPOCH, Draws, GeneratedEvent, User
from operators.ingest import RejectReason

Lang = Literal["en", "zh"]

BAD_KINDS: Final[tuple[tuple[RejectReason, float], ...]] = (
    (RejectReason.INVALID_JSON, 0.16),
    (RejectReason.NOT_AN_OBJECT, 0.08),
    (RejectReason.MISSING_FIELD, 0.18),
    (RejectReason.UNKNOWN_TYPE, 0.10),
    (RejectReason.INVALID_FIELD, 0.18),
    (RejectReason.BAD_TIMESTAMP, 0.12),
    (RejectReason.DUPLICATE_EVENT, 0.18),
)
_UNKNOWN_TYPES: Final = ("page_view", "checkout", "VIEW", "addToCart", "wishlist", "impression")


def _bad_line(reason: RejectReason, base: dict[str, Any], event_id: str, d: Draws) -> bytes | None:
    """A message ``parse_event`` rejects with ``reason``, derived from the valid ``base``."""
    event = dict(base, event_id=event_id)
    if isinstance(base["ts"], int):  # another event of the session, a moment earlier
        event["ts"] = base["ts"] - d.below(3_000)
    encode = msgspec.json.encode
    if reason is RejectReason.INVALID_JSON:
        text = encode(event).decode()
        variants = (
            lambda: text[: len(text) // 4 + d.below(len(text) * 3 // 4)],  # cut off mid-write
            lambda: repr(event),  # a Python dict printed instead of serialised
            lambda: text + encode(dict(base, event_id=event_id + "x")).decode(),  # no newline
            lambda: "<html><body><h1>502 Bad Gateway</h1></body></html>",
            lambda: text.replace('"ts":', '"ts": NaN, "ts_ms":', 1),
        )
        return str(d.choice(variants)()).encode()
    if reason is RejectReason.NOT_AN_OBJECT:
        shapes = (b"[" + encode(event) + b"]", encode(event["type"]), b"null", encode(event["ts"]))
        return bytes(d.choice(shapes))
    if reason is RejectReason.MISSING_FIELD:
        required = {"refund": "price", "search": "text", "review": "text"}
        name = required.get(event["type"], "item_id" if "item_id" in event else "")
        if name and d.chance(0.6):
            if name == "text" and d.chance(0.5):
                event["text"] = "   "  # blank counts as missing
            else:
                del event[name]
        else:
            del event[d.choice(("event_id", "user_id", "ts", "type"))]
        return encode(event)
    if reason is RejectReason.UNKNOWN_TYPE:
        event["type"] = d.choice(_UNKNOWN_TYPES)
        return encode(event)
    if reason is RejectReason.INVALID_FIELD:
        options: list[tuple[str, Any]] = [("user_id", ""), ("event_id", "")]
        if "price" in event:
            options += [("price", -event["price"]), ("price", "NaN"), ("quantity", 0)]
        if "rating" in event:
            options += [("rating", 7), ("rating", 0)]
        if "text" in event:
            options += [("text", (event["text"] + " ") * (2001 // (len(event["text"]) + 1) + 1))]
        if "item_id" in event:
            options += [("item_id", "")]
        name, value = d.choice(options)
        event[name] = value
        return encode(event)
    if reason is RejectReason.BAD_TIMESTAMP:
        ms = event["ts"]
        if not isinstance(ms, int):
            return None
        moment = EPOCH + timedelta(milliseconds=ms)
        stamps = (
            ms // 1000,  # seconds sent as milliseconds
            ms * 1000,  # microseconds
            ms + 0.5,
            moment.strftime("%Y-%m-%d %H:%M:%S"),  # no time zone
            moment.strftime("%m/%d/%Y %H:%M"),
            0,
        )
        event["ts"] = d.choice(stamps)
        return encode(event)
    return None


def malformed_line(
    d: Draws,
    bad_cdf: list[float],
    near: tuple[int, int, dict[str, Any]] | None,
    recent: deque[tuple[bytes, int]],
    writer: Writer,
    users: list[User],
) -> GeneratedEvent:
    """One bad message based on the valid event ``near`` it (or a re-send from ``recent``)."""
    reason = BAD_KINDS[d.pick(bad_cdf)][0]
    # Re-send a recent event; never one of a user who gets deleted, whose profile (and memory
    # of event ids) may be gone by the time the re-send arrives.
    candidates = [(line, user) for line, user in recent if user >= 0]
    if reason is RejectReason.DUPLICATE_EVENT and candidates:
        line, user = candidates[d.below(len(candidates))]
        return GeneratedEvent(line, users[user].user_id, reason.value)
    if near is None:  # no valid event at all: nothing to corrupt
        return GeneratedEvent(b"<html></html>", "", RejectReason.INVALID_JSON.value)
    _, user, base = near
    for candidate in (reason, RejectReason.UNKNOWN_TYPE):
        if candidate is RejectReason.DUPLICATE_EVENT:
            continue
        line_or_none = _bad_line(candidate, base, writer.event_id(), d)
        if line_or_none is not None:
            return GeneratedEvent(line_or_none, users[user].user_id, candidate.value)
    raise AssertionError("unknown_type always produces a line")
