"""The real dataflow under bytewax.testing: outputs, ordering across workers, recovery."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflow.config import Config
from dataflow.flow import build_flow, profile_params
from operators.deltas import delta_from_json, materialize
from tests.conftest import HashEncoder
from tests.reference import assert_profiles_match, reference_states

T0 = 1_714_564_800_000
CONFIG = Config(embed_batch_size=4, embed_max_wait_ms=1, full_every=5)


def stream(n: int, users: int = 7) -> list[str]:
    kinds = ["search", "view", "purchase", "login", "review", "click"]
    lines = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        event = {
            "event_id": f"e{i}",
            "user_id": f"u{(i * 7) % users}",
            "ts": T0 + 1000 * i,
            "type": kind,
            "item_id": f"i{i % 13}",
            "category": f"c{i % 4}",
            "brand": "b",
            "price": 2.5,
            "text": f"query {i % 9}",
            "rating": 4,
        }
        lines.append(json.dumps(event))
    return lines


BAD = ['{"event_id": "x1"', '{"event_id":"x2","user_id":"u1","ts":1,"type":"login"}']


def run_flow(lines: list, encoder: HashEncoder, workers: int = 1, recovery: Path | None = None):
    deltas: list = []
    dead: list = []
    flow = build_flow(
        CONFIG.replace(workers=workers),
        encoder=encoder,
        source=TestingSource(lines, batch_size=5),
        deltas_sink=TestingSink(deltas),
        dlq_sink=TestingSink(dead),
    )
    recovery_config = RecoveryConfig(str(recovery)) if recovery else None
    # A zero epoch interval snapshots after every input batch, so an abort loses little.
    epoch = timedelta(0)
    if workers == 1:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery_config)
    else:
        cluster_main(
            flow,
            [],
            0,
            worker_count_per_proc=workers,
            epoch_interval=epoch,
            recovery_config=recovery_config,
        )
    return [delta_from_json(v) for _, v in deltas], [json.loads(v) for _, v in dead]


@pytest.mark.parametrize("workers", [1, 2])
def test_flow_matches_the_pure_reference(workers: int) -> None:
    lines = stream(300)
    lines.insert(40, BAD[0])
    lines.insert(90, BAD[1])
    lines.insert(120, lines[30])  # a duplicate of an earlier valid event
    deltas, dead = run_flow(lines, HashEncoder(), workers)
    reference = reference_states(lines, HashEncoder(), profile_params(CONFIG, "hash-encoder"))
    assert_profiles_match(materialize(deltas), reference, atol=0)
    assert sorted((d["reason"], d["original"]) for d in dead) == sorted(
        [("invalid_json", BAD[0]), ("bad_timestamp", BAD[1]), ("duplicate_event", lines[30])]
    )
    assert len(deltas) == 300  # one per valid event, no duplicates


def test_every_users_versions_arrive_in_order() -> None:
    deltas, _ = run_flow(stream(400, users=3), HashEncoder(), workers=2)
    for user in {d.user_id for d in deltas}:
        versions = [d.version for d in deltas if d.user_id == user]
        assert versions == list(range(1, len(versions) + 1))


def test_delete_user_emits_a_tombstone_and_erases_the_profile() -> None:
    lines = stream(20, users=2)
    lines.append(json.dumps({"event_id": "del", "user_id": "u0", "ts": T0, "type": "delete_user"}))
    deltas, _ = run_flow(lines, HashEncoder())
    mine = [d for d in deltas if d.user_id == "u0"]
    assert [d.kind for d in mine][-1] == "tombstone"
    assert "tombstone" not in [d.kind for d in mine][:-1]
    assert sorted(materialize(deltas)) == ["u1"]


def test_resume_after_abort_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    lines = stream(200)
    expected, _ = run_flow(lines, HashEncoder())
    init_db_dir(tmp_path, 1)
    interrupted = [*lines[:120], TestingSource.ABORT(), *lines[120:]]
    first, _ = run_flow(interrupted, HashEncoder(), recovery=tmp_path)
    assert len(first) < len(expected)
    second, _ = run_flow(interrupted, HashEncoder(), recovery=tmp_path)
    assert 0 < len(second) < len(expected)  # it resumed from a snapshot, not from scratch
    resumed = materialize([*first, *second])
    assert_profiles_match(
        resumed,
        reference_states(lines, HashEncoder(), profile_params(CONFIG, "hash-encoder")),
        atol=0,
    )
    assert sorted(resumed) == sorted(materialize(expected))
