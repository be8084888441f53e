"""The real dataflow under bytewax.testing: outputs, ordering across workers, recovery."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflow.config import Config
from dataflow.flow import build_flow, check_recovery_shards, profile_params
from operators.deltas import delta_from_json, materialize
from tests.conftest import HashEncoder, WordListSentiment
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
            "user_id": f"u{i % users}",
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


def with_origins(lines: list) -> list:
    """Give each line an origin, as the JSONL and Kafka sources do (markers pass as they are)."""
    return [(line, f"test:{i}") if isinstance(line, str) else line for i, line in enumerate(lines)]


def run_flow(
    lines: list,
    encoder: HashEncoder,
    workers: int = 1,
    recovery: Path | None = None,
    config: Config = CONFIG,
):
    deltas: list = []
    dead: list = []
    flow = build_flow(
        config.replace(workers=workers),
        encoder=encoder,
        sentiment=WordListSentiment(),
        source=TestingSource(with_origins(lines), batch_size=5),
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
    reference = reference_states(
        lines, HashEncoder(), profile_params(CONFIG, "hash-encoder"), WordListSentiment()
    )
    assert_profiles_match(materialize(deltas), reference, atol=0)
    assert sorted((d["reason"], d["original"]) for d in dead) == sorted(
        [("invalid_json", BAD[0]), ("bad_timestamp", BAD[1]), ("duplicate_event", lines[30])]
    )
    assert len(deltas) == 300  # one per valid event, no duplicates


def test_every_user_is_updated_in_input_order() -> None:
    lines = stream(400, users=3)
    deltas, _ = run_flow(lines, HashEncoder(), workers=2)
    sent = [json.loads(line) for line in lines]
    for user in {d.user_id for d in deltas}:
        applied = [event_id for d in deltas if d.user_id == user for event_id in d.event_ids]
        assert applied == [e["event_id"] for e in sent if e["user_id"] == user]
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


@pytest.mark.parametrize("max_wait_ms", [1, 60_000])
def test_resume_after_abort_gives_the_uninterrupted_result(
    tmp_path: Path, max_wait_ms: int
) -> None:
    # With a long wait, texts are still pending in the batcher when the abort comes, so
    # only the batcher's snapshot can carry them across the restart.
    config = CONFIG.replace(embed_max_wait_ms=max_wait_ms, embed_batch_size=1000)
    lines = stream(200)
    init_db_dir(tmp_path, 1)
    abort = TestingSource.ABORT()
    interrupted = [*lines[:120], abort, *lines[120:]]
    first, _ = run_flow(interrupted, HashEncoder(), recovery=tmp_path, config=config)
    assert len(first) <= 120  # it stopped at the abort
    # The restart must resume from the last snapshot (taken every 5 lines), never re-read
    # the start: the lines it must not need are replaced by junk that would be dead-lettered.
    resumed_input = [*["junk"] * 100, *lines[100:120], abort, *lines[120:]]
    second, dead = run_flow(resumed_input, HashEncoder(), recovery=tmp_path, config=config)
    assert dead == []
    reference = reference_states(
        lines, HashEncoder(), profile_params(CONFIG, "hash-encoder"), WordListSentiment()
    )
    assert_profiles_match(materialize([*first, *second]), reference, atol=0)


def test_resuming_with_another_shard_count_is_refused(tmp_path: Path) -> None:
    check_recovery_shards(tmp_path, 2)
    check_recovery_shards(tmp_path, 2)  # the same layout resumes
    with pytest.raises(ValueError, match="written with 2 batcher shards, not 3"):
        check_recovery_shards(tmp_path, 3)


def test_reviews_move_sentiment_and_keywords_in_the_deltas() -> None:
    def review(i: int, category: str, text: str) -> str:
        event = {
            "event_id": f"r{i}",
            "user_id": "u1",
            "ts": T0 + i,
            "type": "review",
            "item_id": f"i{i}",
            "category": category,
            "text": text,
        }
        return json.dumps(event)

    lines = [
        review(0, "shoes", "Great leather boots, love them"),
        review(1, "phones", "Battery died after two days"),
        review(2, "phones", "Screen cracked, refund please"),
    ]
    deltas, _ = run_flow(lines, HashEncoder())
    polarity = [d.changed["sentiment"] for d in deltas]
    assert polarity[0] == pytest.approx(0.8)  # WordListSentiment: 0.9 -> 2 * 0.9 - 1
    assert polarity[2] < polarity[1] < polarity[0]
    by_category = deltas[-1].changed["category_sentiment"]
    assert by_category["shoes"][0] == pytest.approx(0.8)
    assert by_category["phones"][0] == pytest.approx(-0.6)
    assert {"leather", "boots"} <= set(deltas[0].changed["keywords"])
    assert {"battery", "screen", "cracked"} <= set(deltas[-1].changed["keywords"])
