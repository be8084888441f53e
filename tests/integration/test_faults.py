"""Faults in every CI run: random SIGKILLs and a broker outage while the flow runs.

A producer thread sends generated events (fraud episodes included) at a steady rate while
the flow (2 workers, recovery every 0.5 s) is SIGKILLed at random moments at least five
times and restarted on its recovery directory; once, between two kills, the broker is
stopped and started again under the running flow. Then every output topic must equal
what an uninterrupted run of the same events sent: the same segment transitions, alerts
and demand records (exact JSON; replays are fine, other content is not), the same
profiles (versions, segments and RFM groups included; vectors within 1e-4), the same
dead letters; no consumer that read every delta may meet a version gap, and demand must
equal a recount of the events. The moments come from a seed printed with any failure
(``PROFILESTREAM_FAULT_SEED`` replays one).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dataflow.sim import (
    DEFAULT_END_MS,
    AnomalyConfig,
    GeneratedEvent,
    generate_events,
)
from operators.ingest.units import DAY_MS
from operators.profile import Applied, ProfileView
from tests.support.kafka_broker import KafkaBroker, free_port, send
from tests.support.kafka_flow import (
    FlowOutputs,
    TopicReader,
    Topics,
    assert_demand_equals_recount,
    assert_same_outputs,
    covered,
    expected_events,
    read_outputs,
    start_flow,
)
from tests.support.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, DAYS, MALFORMED = 6000, 500, 3, 0.01
PRODUCE_SECONDS = 80.0  # long enough for five restarts and an outage while it runs
KILLS = 5
PROGRESS = 100  # events a restarted process must have covered before it is killed
# A partition read to its end goes idle after this long without a message: longer than an
# outage and the client's reconnection, so only the end of the stream makes them idle.
IDLE_MS = 25_000
OUTAGE_S = (4.0, 8.0)


@pytest.fixture(scope="module")
def generated() -> list[GeneratedEvent]:
    start = DEFAULT_END_MS - DAYS * DAY_MS
    return list(
        generate_events(
            N_EVENTS, N_USERS, seed=31, malformed_rate=MALFORMED, start_ms=start, span_days=DAYS,
            anomalies=AnomalyConfig(),
        )
    )  # fmt: skip


def run_flow(
    broker: KafkaBroker, topics: Topics, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    return start_flow(broker, topics, log, free_port(), "--idle-partition-ms", str(IDLE_MS), *extra)


def uninterrupted(
    broker: KafkaBroker, events_topic: str, generated: list[GeneratedEvent], workdir: Path
) -> FlowOutputs:
    """One process reading the same events topic (so the same origins), with no failure."""
    topics = Topics.create(broker, events=events_topic)
    process = run_flow(broker, topics, workdir / "uninterrupted.log")
    try:
        alive = lambda: process.poll() is None  # noqa: E731
        outputs = read_outputs(broker, topics, expected_events(generated), alive, IDLE_MS)
        assert alive(), (workdir / "uninterrupted.log").read_text()[-3000:]
    finally:
        stop_processes(process)
    return outputs


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


def test_random_kills_and_a_broker_outage_change_no_output(
    own_broker: KafkaBroker, generated: list[GeneratedEvent], tmp_path: Path
) -> None:
    seed = int(os.environ.get("PROFILESTREAM_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    topics = Topics.create(own_broker)
    recovery = ("--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval-s", "0.5")
    produced = threading.Event()
    producer = threading.Thread(
        target=produce_steadily,
        args=(own_broker.bootstrap, topics.events, generated, PRODUCE_SECONDS, produced),
        daemon=True,
    )
    deltas = TopicReader(own_broker, topics.deltas)
    runs = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal runs
        runs += 1
        return run_flow(own_broker, topics, tmp_path / f"run-{runs}.log", *recovery)

    def progress(process: subprocess.Popen[bytes]) -> None:
        """Wait until the process has sent deltas covering PROGRESS new events (start-up,
        the model's load included, is over; or 30 s, once nothing is left to do), then a
        random 0.2-4 s: a moment somewhere in reading, embedding, snapshotting or sending."""
        done = covered(deltas.messages)
        deltas.read_until(lambda ms: covered(ms) >= done + PROGRESS, 30, process)
        deltas.read_until(lambda ms: False, rng.uniform(0.2, 4.0), process)

    faults: list[str] = []
    outage_after = rng.randrange(1, KILLS)  # the broker goes down after this restart
    process = start()
    producer.start()
    try:
        for kill in range(1, KILLS + 1):
            progress(process)
            log = (tmp_path / f"run-{runs}.log").read_text()
            assert process.poll() is None, (seed, log[-3000:])
            process.send_signal(signal.SIGKILL)
            process.wait()
            faults.append(f"SIGKILL at {covered(deltas.messages)} covered")
            process = start()
            if kill == outage_after:  # while the restarted flow runs
                progress(process)
                own_broker.stop()
                down = rng.uniform(*OUTAGE_S)
                time.sleep(down)
                own_broker.start(fresh=False)
                faults.append(f"broker down {down:.1f} s under the running flow")
        producer.join(PRODUCE_SECONDS + 300)
        assert produced.is_set(), (seed, faults)
        alive = lambda: process.poll() is None  # noqa: E731
        faulted = read_outputs(own_broker, topics, expected_events(generated), alive, IDLE_MS)
        assert alive(), (seed, faults, (tmp_path / f"run-{runs}.log").read_text()[-3000:])
    finally:
        stop_processes(process)
        deltas.close()
    context = f"seed {seed}: {'; '.join(faults)}"
    assert covered_all(faulted) == expected_events(generated), context  # every event
    view = ProfileView()
    outcomes = [view.apply(d) for d in faulted.deltas]
    assert Applied.GAP not in outcomes, context  # no version missing
    replays = outcomes.count(Applied.STALE)
    assert replays > 0, context  # the kills landed mid-stream: deltas were re-sent
    repeated = sum(len(r) - len(set(r)) for r in (faulted.segments, faulted.demand))
    print(f"{context}; {len(outcomes)} deltas, {replays} replayed; {repeated} records re-sent")
    assert_same_outputs(faulted, uninterrupted(own_broker, topics.events, generated, tmp_path))
    assert_demand_equals_recount(faulted, generated)


def covered_all(outputs: FlowOutputs) -> int:
    return len({(d.user_id, e) for d in outputs.deltas for e in d.event_ids})
