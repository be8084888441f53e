"""Keep personal data minimal: IP addresses and device ids become keyed hashes on arrival.

Risk rules only need to know whether a device or an IP is one the user has used before, so
the flow never needs the values themselves. :func:`pseudonymise` replaces ``ip`` and
``device_id`` of a parsed event with ``HMAC-SHA256(secret, value)`` (128 bits, hex, prefixed
``h:``) before the event reaches any state, snapshot, delta, alert or dead letter: equal
values still compare equal, but without the secret nobody can test a guess (an IPv4 address
has only 2^32 values, so a plain hash would be reversible in minutes). The original message
bytes the event carries for dead-lettering are dropped too: a later step that refuses the
event (a duplicate, say) dead-letters it re-encoded with the hashes
(:func:`operators.ingest.events.refused`), so its dead letter holds no clear IP either.

The secret comes from configuration (``PROFILESTREAM_PII_SECRET``, from a Kubernetes
Secret) and is never logged. Changing it makes every known device look new to the risk
rules until users have logged in again: rotate it with that in mind.

>>> from operators.ingest import parse_event
>>> event = parse_event(b'{"event_id": "e1", "user_id": "u1", "ts": 1700000000000, '
...                     b'"type": "login", "ip": "203.0.113.7", "device_id": "phone-1"}')
>>> key = pii_key("a secret")
>>> hidden = pseudonymise(event, key)
>>> hidden.ip, hidden.device_id
('h:1cf8f1a057784e23d447741ca6e7e6f1', 'h:ce0b2ece8801987b968e60fbffdb3995')
>>> hidden.raw, pseudonymise(event, key) == hidden
(b'', True)
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Final

import msgspec

from operators.ingest.events import Event

#: Marks a pseudonymised value (and makes hashing twice harmless to detect).
PREFIX: Final = "h:"
#: Used when no secret is configured (development and the demo only: it is public).
DEVELOPMENT_SECRET: Final = "profilestream-development-secret"


def pii_key(secret: str) -> bytes:
    """The HMAC key of a configured secret (an empty one means the development secret)."""
    return (secret or DEVELOPMENT_SECRET).encode()


def keyed_hash(value: str, key: bytes) -> str:
    """``h:`` + the first 128 bits of HMAC-SHA256 of ``value``, in hex."""
    return PREFIX + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def pseudonymise(event: Event, key: bytes) -> Event:
    """``event`` with its IP and device id replaced by keyed hashes and its original message
    bytes dropped (itself if it has neither)."""
    if event.ip is None and event.device_id is None:
        return event
    ip = None if event.ip is None else _hash(event.ip, key)
    device = None if event.device_id is None else _hash(event.device_id, key)
    return msgspec.structs.replace(event, ip=ip, device_id=device, raw=b"")


@lru_cache(maxsize=65_536)
def _hash(value: str, key: bytes) -> str:
    """Users log in from the same few devices and IPs: hash each (value, key) once."""
    return keyed_hash(value, key)
