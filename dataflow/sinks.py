"""How dead letters look in each sink.

On Kafka a dead letter keeps the original message untouched -- same key, same value bytes --
and carries the reason code, error text and origin in headers (``reason``, ``error``,
``source``), so a replay tool can re-produce it verbatim after a fix. In a JSONL file it is
one object per line; the original is ``original`` when it is UTF-8 text, else
``original_b64``.
"""

from __future__ import annotations

import base64

import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage

from operators.events import DeadLetter


def dead_letter_json(dead: DeadLetter) -> str:
    record: dict[str, str | None] = {
        "reason": dead.reason,
        "error": dead.error,
        "source": dead.source,
        "key": None if dead.key is None else dead.key.decode("utf-8", "replace"),
    }
    try:
        record["original"] = dead.original.decode("utf-8")
    except UnicodeDecodeError:
        record["original_b64"] = base64.b64encode(dead.original).decode("ascii")
    return msgspec.json.encode(record).decode()


def dead_letter_message(dead: DeadLetter, topic: str) -> KafkaSinkMessage[bytes | None, bytes]:
    headers = [
        ("reason", dead.reason.encode()),
        ("error", dead.error.encode()),
        ("source", dead.source.encode()),
    ]
    return KafkaSinkMessage(dead.key, dead.original, topic=topic, headers=headers)
