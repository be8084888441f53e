"""The JSONL source (bytes in, origins attached) and the dead-letter formats of both sinks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from bytewax.testing import TestingSink, run_main

from dataflow.config import Config
from dataflow.flow import build_flow
from dataflow.sinks import dead_letter_json, dead_letter_message
from operators.ingest import DeadLetter
from operators.profile import delta_from_json
from tests.support.fakes import HashEncoder, WordListSentiment

GOOD = b'{"event_id": "e1", "user_id": "u1", "ts": 1714564800000, "type": "login"}'
NOT_UTF8 = b'{"event_id": "e2", "user_id": "\xff", "ts": 1714564800000, "type": "login"}'


def test_a_file_with_invalid_utf8_and_blank_lines_is_dead_lettered_not_fatal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(GOOD + b"\n" + NOT_UTF8 + b"\n\n")
    deltas: list = []
    dead: list = []
    flow = build_flow(
        Config(input_path=path),
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        sinks={"deltas": TestingSink(deltas), "dead_letters": TestingSink(dead)},
    )
    run_main(flow)
    delta = delta_from_json(deltas[0][1])
    assert delta.incarnation == "e1@events.jsonl:0"  # the event id and where it was read
    records = [json.loads(line) for _, line in dead]
    assert [(r["reason"], r["source"]) for r in records] == [
        ("invalid_json", f"events.jsonl:{len(GOOD) + 1}"),
        ("invalid_json", f"events.jsonl:{len(GOOD) + len(NOT_UTF8) + 2}"),
    ]
    assert base64.b64decode(records[0]["original_b64"]) == NOT_UTF8
    assert records[1]["original"] == ""


def test_kafka_dead_letters_keep_key_and_value_and_say_why_in_headers() -> None:
    dead = DeadLetter("unknown_type", "bad type", b"\xffraw", b"user-7", "events/1/42")
    message = dead_letter_message(dead, "dlq")
    assert (message.topic, message.key, message.value) == ("dlq", b"user-7", b"\xffraw")
    assert dict(message.headers) == {
        "reason": b"unknown_type",
        "error": b"bad type",
        "source": b"events/1/42",
    }
    assert json.loads(dead_letter_json(dead))["original_b64"] == "/3Jhdw=="
