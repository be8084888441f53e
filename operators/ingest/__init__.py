"""What enters the system: events validated or dead-lettered, IPs and devices hidden, and
event time read from the data.

Every message passes :func:`parse_event`, which returns an :class:`Event` or a
:class:`DeadLetter` with a reason code, never raises; :func:`pseudonymise` replaces IPs and
device ids with keyed hashes before anything keeps them; :class:`PartitionClock` follows each
input partition's event time and stamps every event with its partition's watermark, and
:class:`WatermarkTable` is what a worker knows of all of them (see
:mod:`operators.ingest.event_clock`).

>>> event = parse_event(b'{"event_id": "e1", "user_id": "u1", "ts": 1700000000000, '
...                     b'"type": "login"}')
>>> event.user_id, parse_event(b"{}").reason
('u1', 'missing_field')
"""

from operators.ingest.event_clock import (
    MAX_AHEAD_MS,
    ChannelState,
    EventTimeSpeed,
    PartitionClock,
    Progress,
    WatermarkTable,
)
from operators.ingest.events import (
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    MAX_TS_MS,
    MIN_TS_MS,
    NO_WATERMARK,
    REQUIRED_FIELDS,
    DeadLetter,
    Event,
    EventType,
    RejectReason,
    beyond_dedupe_memory,
    duplicate_of,
    erased_user,
    parse_event,
    parse_timestamp_ms,
    refused,
    wire_form,
)
from operators.ingest.privacy import keyed_hash, pii_key, pseudonymise

__all__ = [
    "EVENT_TYPES",
    "MAX_AHEAD_MS",
    "MAX_MESSAGE_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_TS_MS",
    "MIN_TS_MS",
    "NO_WATERMARK",
    "REQUIRED_FIELDS",
    "ChannelState",
    "DeadLetter",
    "Event",
    "EventTimeSpeed",
    "EventType",
    "PartitionClock",
    "Progress",
    "RejectReason",
    "WatermarkTable",
    "beyond_dedupe_memory",
    "duplicate_of",
    "erased_user",
    "keyed_hash",
    "parse_event",
    "parse_timestamp_ms",
    "pii_key",
    "pseudonymise",
    "refused",
    "wire_form",
]
