"""Backpressure: while too many users wait for text vectors, the input stops reading.

A model that is still loading (or too slow) makes every user with a query wait; without a
bound the source would read on and those users would pile up in memory. The real flow runs
here (Bytewax's test runner) with a model that is not ready for its first half second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from dataflow.config import Config
from dataflow.factories import profile_params
from dataflow.flow import build_flow
from dataflow.sources import PartitionTime, _EventPartition
from operators.ingest import ChannelState, DeadLetter, Progress
from operators.profile import delta_from_json, materialize
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.reference import assert_profiles_match, reference_states

T0 = 1_714_564_800_000
USERS = 300
BATCH = 5  # lines per source batch
CONFIG = Config(embed_batch_size=8, embed_max_wait_ms=1, emit_interval_ms=0)


class LoadingEncoder(HashEncoder):
    """A model that takes ``load_s`` to load from the first time it is asked; it notes how
    many input lines had been read when it embedded its first batch."""

    def __init__(self, load_s: float, lines_read: list[int]) -> None:
        super().__init__()
        self.load_s = load_s
        self.lines_read = lines_read
        self.started: float | None = None
        self.read_at_first_batch: int | None = None

    def ready(self) -> bool:
        if self.started is None:
            self.started = time.monotonic()
        return time.monotonic() - self.started >= self.load_s

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.read_at_first_batch is None:
            self.read_at_first_batch = self.lines_read[0]
        return super().encode(texts)


def searches() -> list[str]:
    """One search by each of ``USERS`` users: every one of them waits for the model."""
    return [
        json.dumps(
            {
                "event_id": f"e{u}",
                "user_id": f"u{u}",
                "ts": T0 + 1_000 * u,
                "type": "search",
                "text": f"query {u % 17}",
            }
        )
        for u in range(USERS)
    ]


def counted(lines: list[str], read: list[int]) -> Iterator[tuple[str, str]]:
    for i, line in enumerate(lines):
        read[0] += 1
        yield line, f"test:{i}"


def held_seconds() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "profilestream_input_held_seconds"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


@pytest.mark.parametrize("most", [20, 0])
def test_the_input_waits_while_too_many_users_wait_for_the_model(most: int) -> None:
    lines, read = searches(), [0]
    encoder = LoadingEncoder(0.5, read)
    deltas: list = []
    config = CONFIG.replace(max_users_waiting=most)
    held_before = held_seconds()
    flow = build_flow(
        config,
        encoder=encoder,
        sentiment=WordListSentiment(),
        source=TestingSource(counted(lines, read), batch_size=BATCH),
        sinks={"deltas": TestingSink(deltas)},
    )
    run_main(flow)

    if most:
        # The bound, and what was read before the users of the last batches were counted.
        assert encoder.read_at_first_batch is not None
        assert encoder.read_at_first_batch <= most + 4 * BATCH
        assert held_seconds() - held_before >= 0.3  # most of the load was spent held
    else:  # no bound: the whole input was read while the model loaded
        assert encoder.read_at_first_batch == USERS
    params = profile_params(config, encoder.name)
    expected = reference_states(lines, HashEncoder(), params, WordListSentiment())
    profiles = materialize([delta_from_json(v) for _, v in deltas])
    assert_profiles_match(profiles, expected, params, atol=0)


class CaughtUpReader:
    """A raw partition at its end: it has nothing to hand over."""

    caught_up = True

    def __init__(self) -> None:
        self.reads = 0

    def next_batch(self) -> list[tuple[str, str]]:
        self.reads += 1
        return []


def test_a_held_partition_reads_nothing_and_never_claims_to_be_idle() -> None:
    """Idle means "read to its end and quiet": a held partition has not read its end, so it
    must not let the watermark pass what it may still hold."""
    wall, held = [0], [True]
    reader = CaughtUpReader()
    held_before = held_seconds()
    part = _EventPartition(
        reader,
        "events/0",
        lambda *_: DeadLetter("invalid_json", "never called: nothing is read", b""),
        PartitionTime(lateness_ms=0, idle_after_ms=100),
        lambda: wall[0],
        held=lambda: held[0],
    )
    for wall[0] in range(0, 1_000, 50):  # ten idle periods, held throughout
        assert part.next_batch() == []
        assert part.awake_at() is not None  # it looks again soon, not at once
    assert reader.reads == 0
    assert held_seconds() - held_before == pytest.approx(0.95)  # 0 to 950 ms, held
    held[0] = False
    markers = [item for _ in range(3) for item in part.next_batch()]
    assert reader.reads == 3 and part.awake_at() is None
    assert [m.state for m in markers if isinstance(m, Progress)] == [ChannelState.IDLE]
