"""The flow as a 2-process Bytewax cluster, as the StatefulSet runs it, on real Kafka.

Two ``python -m bytewax.run dataflow.flow:flow_from_env -w 1 -i 0/1 -a "a;b"`` processes
read a 3-partition events topic, each with its own API port and recovery directory: the
recovery partitions spread over the two directories by ``profilestream cluster-init``'s
code, as on the pods' volumes (deploy/README.md, "Scaling out and recovery"). The first
half of the events is read, then process 1 is SIGKILLed in the middle of a second burst,
process 0 stops with it (a Bytewax cluster needs every process), and both restart on the
same directories. Every
output topic must then equal what one uninterrupted process sent for the same events:
watermarks travel with the data and are part of the snapshots, so segment checks, expiry
and demand buckets see the same events however the input was split and interrupted.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dataflow.sim import GeneratedEvent, generate_events
from operators.profile import Applied, ProfileView
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import (
    BytewaxCluster,
    FlowOutputs,
    TopicReader,
    Topics,
    assert_same_outputs,
    covered,
    expected_events,
    produce,
    read_outputs,
    start_flow,
)
from tests.support.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, SEED = 3000, 300, 23
IDLE_MS = 3_000  # no outage here: quiet partitions may go idle soon


@pytest.fixture(scope="module")
def generated() -> list[GeneratedEvent]:
    return list(generate_events(N_EVENTS, N_USERS, seed=SEED, malformed_rate=0.01))


def uninterrupted(
    kafka: KafkaBroker, events_topic: str, generated: list[GeneratedEvent], workdir: Path
) -> FlowOutputs:
    """One process reading the same events topic (so the same origins), with no failure."""
    topics = Topics.create(kafka, events=events_topic)
    log = workdir / "one-process.log"
    process = start_flow(kafka, topics, log, free_port(), "--idle-partition-ms", str(IDLE_MS))
    try:
        alive = lambda: process.poll() is None  # noqa: E731
        outputs = read_outputs(kafka, topics, expected_events(generated), alive, IDLE_MS)
        assert alive(), log.read_text()[-3000:]
    finally:
        stop_processes(process)
    return outputs


def test_a_two_process_cluster_that_loses_a_process_sends_what_one_process_does(
    kafka: KafkaBroker, generated: list[GeneratedEvent], tmp_path: Path
) -> None:
    first, burst = generated[: N_EVENTS // 2], generated[N_EVENTS // 2 :]
    topics = Topics.create(kafka)
    produce(kafka, topics.events, first)
    cluster = BytewaxCluster(kafka, topics, tmp_path, env={"IDLE_PARTITION_MS": str(IDLE_MS)})
    deltas = TopicReader(kafka, topics.deltas)
    cluster.start()
    try:
        want = expected_events(first)
        deltas.read_until(lambda ms: covered(ms) >= want or not cluster.alive(), 300)
        assert cluster.alive(), cluster.logs()
        assert covered(deltas.messages) == want, cluster.logs()
        deltas.read_until_quiet(IDLE_MS / 1000 + 3, 60)  # the first half is snapshotted

        # Lose process 1 in the middle of a burst; process 0 cannot go on without it.
        produce(kafka, topics.events, burst)
        want_all = expected_events(generated)
        deltas.read_until(lambda ms: covered(ms) >= want + (want_all - want) // 4, 300)
        cluster.processes[1].send_signal(signal.SIGKILL)
        cluster.processes[0].wait(timeout=60)
        assert covered(deltas.messages) < want_all, "the kill must land mid-burst"
        written_before_restart = len(deltas.read_until(lambda ms: False, timeout_s=3))

        cluster.start()  # both again, on the same recovery directories
        outputs = read_outputs(kafka, topics, want_all, cluster.alive, IDLE_MS)
        assert cluster.alive(), cluster.logs()
    finally:
        cluster.stop()
        deltas.close()
    assert len({(d.user_id, e) for d in outputs.deltas for e in d.event_ids}) == want_all
    # Resumed from the snapshots: starting over would redo every event, as a lost recovery
    # partition would.
    redone = sum(len(d.event_ids) for d in outputs.deltas[written_before_restart:])
    assert redone <= want_all - want, (redone, want_all, want)
    view = ProfileView()
    assert Applied.GAP not in [view.apply(d) for d in outputs.deltas]  # no version missing
    assert_same_outputs(outputs, uninterrupted(kafka, topics.events, generated, tmp_path))
