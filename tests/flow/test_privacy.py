"""IPs and device ids never reach state, snapshots or outputs in clear (issue: PII minimisation)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.config import Config
from dataflow.flow import build_flow
from operators.ingest import Event, keyed_hash, parse_event, pii_key, pseudonymise
from tests.support.fakes import HashEncoder, WordListSentiment

T0 = 1_717_200_000_000
IP, DEVICE = "198.51.100.23", "device-of-alice"


def test_hashes_are_keyed_stable_and_hide_the_value() -> None:
    key, other = pii_key("s1"), pii_key("s2")
    assert keyed_hash(IP, key) == keyed_hash(IP, key) != keyed_hash(IP, other)
    assert IP not in keyed_hash(IP, key) and keyed_hash(IP, key).startswith("h:")
    assert pii_key("") == pii_key("") != key  # no secret: the public development one


def test_an_event_without_ip_or_device_is_left_as_it_is() -> None:
    event = parse_event(b'{"event_id": "e", "user_id": "u", "ts": 1717200000000, "type": "view",'
                        b' "item_id": "i"}')  # fmt: skip
    assert isinstance(event, Event) and pseudonymise(event, pii_key("k")) is event


def test_nothing_the_flow_keeps_or_sends_holds_a_clear_ip_or_device(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        kind = ("login", "view", "purchase", "search")[i % 4]
        event = {"event_id": f"e{i}", "user_id": f"u{i % 3}", "ts": T0 + i * 60_000,
                 "type": kind, "item_id": "i1", "category": "c", "price": 5.0,
                 "text": "red shoes", "ip": IP, "device_id": DEVICE}  # fmt: skip
        lines.append(json.dumps(event))
    lines.append(lines[4])  # a duplicate: its dead letter must not leak either
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    outputs: dict[str, list] = {n: [] for n in ("deltas", "dead_letters", "alerts", "segments")}
    flow = build_flow(
        Config(pii_secret="test secret", emit_interval_ms=0, embed_max_wait_ms=1),
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=TestingSource([(line, f"t:{i}") for i, line in enumerate(lines)], batch_size=3),
        sinks={name: TestingSink(items) for name, items in outputs.items()},
    )
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(recovery)))
    sent = json.dumps({name: [v for _, v in items] for name, items in outputs.items()})
    assert outputs["deltas"] and len(outputs["dead_letters"]) == 1
    assert IP not in sent and DEVICE not in sent
    assert keyed_hash(DEVICE, pii_key("test secret")) in sent  # in the duplicate's dead letter
    stored = b"".join(p.read_bytes() for p in recovery.iterdir())
    assert IP.encode() not in stored and DEVICE.encode() not in stored
    # ... though the snapshots hold the users' known devices, as hashes.
    assert keyed_hash(DEVICE, pii_key("test secret")).encode() in stored
