"""Faults in every CI run: random SIGKILLs and a broker outage under a live producer.

A producer thread sends generated events at a steady rate while the flow (2 workers,
recovery every 0.5 s) is SIGKILLed at random moments at least five times and restarted on
its recovery directory, and the broker is stopped and started again once in between. Then
the materialised profiles must equal an uninterrupted run's (the pure reference) within
1e-4, no consumer that read every delta may meet a version gap, every event must be in a
delta and every dead letter on its topic. The moments come from a seed printed with any
failure (``PROFILESTREAM_FAULT_SEED`` replays one).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dataflow.commands.generator import GeneratedEvent, generate_events
from dataflow.config import Config
from dataflow.flow import profile_params, shared_embedder
from operators.deltas import Applied, ProfileView
from tests.kafka_broker import KafkaBroker, free_port, send
from tests.kafka_flow import (
    TopicReader,
    Topics,
    covered,
    dead_letters_of,
    deltas_of,
    expected_dead_letters,
    expected_events,
    newest_ts,
    reference_at,
    start_flow,
)
from tests.reference import assert_profiles_match
from tests.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, MALFORMED = 5000, 500, 0.01
PRODUCE_SECONDS = 80.0  # long enough for five restarts and an outage while it runs
KILLS = 5
PROGRESS = 100  # events a restarted process must have covered before it is killed


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of this module's own: stopping it must not disturb the other tests."""
    broker = KafkaBroker(tmp_path_factory.mktemp("fault-broker"))
    broker.start()
    yield broker
    broker.stop()


def produce_steadily(bootstrap: str, topic: str, events: list[GeneratedEvent], seconds: float,
                     done: threading.Event) -> None:  # fmt: skip
    """Keyed by user, evenly over ``seconds``; librdkafka holds them through an outage."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "enable.idempotence": True, "log_level": 0})  # fmt: skip
    started = time.monotonic()
    for n, g in enumerate(events):
        pause = started + seconds * n / len(events) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send(producer, topic, g.user_id.encode(), g.line)
    if producer.flush(300) != 0:
        raise RuntimeError("the live producer could not deliver every event")
    done.set()


def test_random_kills_and_a_broker_outage_lose_nothing(broker: KafkaBroker, tmp_path: Path) -> None:
    seed = int(os.environ.get("PROFILESTREAM_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    generated = list(generate_events(N_EVENTS, N_USERS, seed=31, malformed_rate=MALFORMED))
    topics = Topics.create(broker)
    recovery = ("--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval-s", "0.5")
    produced = threading.Event()
    producer = threading.Thread(
        target=produce_steadily,
        args=(broker.bootstrap, topics.events, generated, PRODUCE_SECONDS, produced),
        daemon=True,
    )
    deltas = TopicReader(broker, topics.deltas)
    runs = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal runs
        runs += 1
        return start_flow(broker, topics, tmp_path / f"run-{runs}.log", free_port(), *recovery)

    faults: list[str] = []
    outage_after = rng.randrange(1, KILLS)  # the broker goes down after this many kills
    process = start()
    producer.start()
    try:
        for kill in range(1, KILLS + 1):
            # A random moment while events flow: once the process has sent deltas covering
            # PROGRESS new events (start-up, the model's load included, is over; or after
            # 30 s, once the producer is done and nothing is left to do), somewhere in
            # reading, embedding, snapshotting or sending.
            done = covered(deltas.messages)
            deltas.read_until(lambda ms, done=done: covered(ms) >= done + PROGRESS, 30, process)
            delay = rng.uniform(0.2, 4.0)
            deltas.read_until(lambda ms: False, delay, process)
            log = (tmp_path / f"run-{runs}.log").read_text()
            assert process.poll() is None, (seed, log[-3000:])
            process.send_signal(signal.SIGKILL)
            process.wait()
            at = covered(deltas.messages)
            faults.append(f"SIGKILL {delay:.1f} s after {PROGRESS} more events (at {at} covered)")
            if kill == outage_after:
                broker.stop()
                down = rng.uniform(5.0, 15.0)
                time.sleep(down)
                broker.start(fresh=False)
                faults.append(f"broker down {down:.1f} s")
            process = start()
        producer.join(PRODUCE_SECONDS + 300)
        assert produced.is_set(), (seed, faults)
        want = expected_events(generated)
        deltas.read_until(lambda ms: covered(ms) >= want, 480, process)
        messages = deltas.read_until_quiet(quiet_s=6, timeout_s=120)
        assert process.poll() is None, (seed, faults)
    finally:
        stop_processes(process)
        deltas.close()
    context = f"seed {seed}: {'; '.join(faults)}"
    assert covered(messages) == want, context  # every event is in a delta
    received = deltas_of(messages)
    view = ProfileView()
    outcomes = [view.apply(d) for d in received]
    assert Applied.GAP not in outcomes, context  # no version missing
    replays = outcomes.count(Applied.STALE)
    assert replays > 0, context  # the kills landed mid-stream: deltas were re-sent
    # Events sent again also count what was redone: a restart's backlog often folds them
    # into a newer version, which consumers apply rather than drop as stale.
    sent = [(d.user_id, e) for d in received for e in d.event_ids]
    resent = len(sent) - len(set(sent))
    print(f"{context}; {len(outcomes)} deltas, {replays} replayed, {resent} events sent again")
    # Restarts rebuild the per-process event clock: what the clock alone changes is compared
    # loosely (see tests/test_kafka_e2e.py); every other field and the vectors exactly.
    params = profile_params(Config(), shared_embedder(Config()).name)
    reference = reference_at(generated, newest_ts(generated) - Config().allowed_lateness_ms)
    assert_profiles_match(view.profiles, reference, params, atol=1e-4, late_users=set(reference))
    dlq = TopicReader(broker, topics.dlq)
    dead = dead_letters_of(dlq.read_until(lambda ms: False, timeout_s=5))
    dlq.close()
    assert set(dead) == set(expected_dead_letters(generated)), context  # each at least once
