"""``serve`` as an orchestrator sees it: catching up, losing its consumer, losing its broker.

A fresh ``profilestream serve`` is ready only once its store holds everything the topic
did when it started; a serve whose consumer process is killed turns unready and not live
(the pod is restarted); when the broker stops, it turns unready within the documented
bound (no broker answer for 10 s) but stays live (a restart would not bring the broker
back), and it is ready again once the broker is back. The module has a broker of its own:
stopping it must not disturb the other tests.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from operators.profile import ProfileDelta, encode_vector
from tests.integration.test_serve import ServeProcess, fetch, kafka_messages
from tests.support.kafka_broker import KafkaBroker, produce_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_700_000_000_000


def probes(serve: ServeProcess) -> tuple[int, int, str]:
    """(``/healthz`` status code, ``/readyz`` status code, the health's status)."""
    live, health = fetch(f"{serve.ops}/healthz")
    ready, _ = fetch(f"{serve.ops}/readyz")
    return live, ready, health["status"]


def wait_for(serve: ServeProcess, want: tuple[int, int, str], timeout_s: float) -> float:
    """Seconds until the probes answer ``want``."""
    started = time.monotonic()
    seen: tuple[int, int, str] | None = None
    while time.monotonic() - started < timeout_s:
        assert serve.process.poll() is None, serve.log.read_text()[-3000:]
        try:
            seen = probes(serve)
        except (urllib.error.URLError, ConnectionError):
            seen = None
        if seen == want:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"probes {seen}, not {want}, after {timeout_s} s")


def deltas_for(users: int, prefix: str) -> list[ProfileDelta]:
    return [
        ProfileDelta(
            f"{prefix}{i}",
            1,
            "full",
            f"{prefix}{i}-1",
            T0,
            [f"e{i}"],
            "m",
            changed={"spend": float(i)},
            interest=encode_vector(np.zeros(4, np.float16)),
        )
        for i in range(users)
    ]


def test_a_fresh_serve_is_ready_only_once_its_store_has_caught_up(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    users = 40_000
    own_broker.create_topic("backlog", partitions=2)
    own_broker.create_topic("backlog-segments", partitions=1)
    produce_all(own_broker.bootstrap, "backlog", kafka_messages(deltas_for(users, "b")))  # type: ignore[arg-type]
    serve = ServeProcess(
        f"sqlite://{tmp_path / 'p.db'}", own_broker, "backlog", "backlog-segments",
        tmp_path / "serve.log",
    )  # fmt: skip
    samples: list[tuple[int, int | None]] = []  # (/readyz status, profiles in the store)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready, _ = fetch(f"{serve.ops}/readyz")
                _, health = fetch(f"{serve.ops}/healthz")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
                continue
            samples.append((ready, health["users"]))
            if ready == 200:
                break
    finally:
        serve.stop(signal.SIGTERM)
    assert samples and samples[-1][0] == 200, samples[-5:]
    # Ready only with every profile in the store; never ready before (the samples show
    # the store filling while the answer was 503).
    assert [users_held for ready, users_held in samples if ready == 200] == [users]
    behind = [users_held for ready, users_held in samples if ready == 503]
    assert behind and all(held is None or held <= users for held in behind), behind[-5:]


def test_a_serve_whose_consumer_dies_turns_unready_and_not_live(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    own_broker.create_topic("few", partitions=1)
    own_broker.create_topic("few-segments", partitions=1)
    produce_all(own_broker.bootstrap, "few", kafka_messages(deltas_for(10, "f")))  # type: ignore[arg-type]
    serve = ServeProcess(
        f"sqlite://{tmp_path / 'p.db'}", own_broker, "few", "few-segments", tmp_path / "serve.log"
    )
    try:
        wait_for(serve, (200, 200, "ok"), 60)
        os.kill(serve.consumer_pid(), signal.SIGKILL)
        wait_for(serve, (503, 503, "down"), 10)  # the liveness probe restarts the pod
    finally:
        serve.stop(signal.SIGTERM)


def test_serve_is_unready_but_alive_while_the_broker_is_away(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    own_broker.create_topic("deltas", partitions=2)
    own_broker.create_topic("segments", partitions=1)
    deltas = deltas_for(20, "u")
    produce_all(own_broker.bootstrap, "deltas", kafka_messages(deltas))  # type: ignore[arg-type]
    serve = ServeProcess(
        f"sqlite://{tmp_path / 'p.db'}", own_broker, "deltas", "segments", tmp_path / "serve.log"
    )
    try:
        wait_for(serve, (200, 200, "ok"), 60)
        assert fetch(f"{serve.url}/users/u7")[1]["fields"]["spend"] == 7.0
        own_broker.stop()
        # Unready within the bound (10 s without an answer, the lag asked every second
        # with a 1 s timeout per partition), never restarted meanwhile.
        took = wait_for(serve, (200, 503, "unreachable"), 40)
        assert took >= 9, took
        assert fetch(f"{serve.url}/users/u7")[0] == 200  # what it holds is still served
        own_broker.start(fresh=False)
        wait_for(serve, (200, 200, "ok"), 90)
    finally:
        serve.stop(signal.SIGTERM)
