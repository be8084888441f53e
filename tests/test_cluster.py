"""The flow as a 2-process Bytewax cluster, as the StatefulSet runs it, on real Kafka.

Two ``python -m bytewax.run dataflow.flow:flow_from_env -w 1 -i 0/1 -a "a;b"`` processes
read a 3-partition events topic, each with its own API port and recovery directory: all
recovery partitions on process 0's directory, process 1's empty, as on the pods' volumes
(deploy/README.md, "Scaling out and recovery"). The materialised profiles must equal the
pure reference; then process 1 is SIGKILLed in the middle of a second burst, process 0
stops with it (a Bytewax cluster needs every process), both restart on the same
directories, and the profiles must equal the reference for all events.

Each process's event clock follows the partitions it reads, so what the clock alone
changes (segments, RFM, the versions they make) is compared loosely, as after a restart in
the single-process tests; every other field and the interest vectors must be equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from dataflow.commands.generator import generate_events
from dataflow.config import Config
from dataflow.flow import profile_params, shared_embedder
from operators.deltas import Applied, ProfileView
from tests.kafka_broker import KafkaBroker, free_port
from tests.kafka_flow import (
    ROOT,
    TopicReader,
    Topics,
    covered,
    deltas_of,
    expected_events,
    newest_ts,
    produce,
    reference_at,
)
from tests.reference import assert_profiles_match
from tests.server_process import stop_processes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS, N_USERS, SEED = 3000, 300, 23
RECOVERY_PARTITIONS = 4  # at least the cluster's workers (2), fixed for the data's life


class Cluster:
    """Two Bytewax processes of one worker each, on loopback."""

    def __init__(self, kafka: KafkaBroker, topics: Topics, workdir: Path) -> None:
        self.kafka, self.topics, self.workdir = kafka, topics, workdir
        self.recovery = [workdir / "recovery-0", workdir / "recovery-1"]
        for folder in self.recovery:
            folder.mkdir()
        init_db_dir(self.recovery[0], RECOVERY_PARTITIONS)  # process 0's volume holds them all
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        topics = self.topics
        settings = {
            "SOURCE": "kafka", "SINK": "kafka", "BROKERS": self.kafka.bootstrap,
            "EVENTS_TOPIC": topics.events, "DELTAS_TOPIC": topics.deltas,
            "DLQ_TOPIC": topics.dlq, "SEGMENTS_TOPIC": topics.segments,
            "ALERTS_TOPIC": topics.alerts, "DEMAND_TOPIC": topics.demand,
        }  # fmt: skip
        self.processes = []
        for index in range(2):
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                **{f"PROFILESTREAM_{k}": v for k, v in settings.items()},
                "BYTEWAX_DATAFLOW_API_ENABLED": "true",
                "BYTEWAX_DATAFLOW_API_PORT": str(free_port()),
                "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(self.workdir),
            }
            command = [
                sys.executable, "-m", "bytewax.run", "dataflow.flow:flow_from_env",
                "-w", "1", "-i", str(index), "-a", addresses,
                "-r", str(self.recovery[index]), "-s", "1", "-b", "0",
            ]  # fmt: skip
            log = self.workdir / f"process-{index}-run-{self.runs}.log"
            with log.open("wb") as out:
                self.processes.append(
                    subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
                )

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.workdir.glob("process-*.log"))
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        stop_processes(*self.processes)


def test_a_two_process_cluster_survives_losing_a_process(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    generated = list(generate_events(N_EVENTS, N_USERS, seed=SEED, malformed_rate=0.01))
    first, burst = generated[: N_EVENTS // 2], generated[N_EVENTS // 2 :]
    topics = Topics.create(kafka)
    produce(kafka, topics.events, first)
    cluster = Cluster(kafka, topics, tmp_path)
    deltas = TopicReader(kafka, topics.deltas)
    params = profile_params(Config(), shared_embedder(Config()).name)
    lateness = Config().allowed_lateness_ms
    cluster.start()
    try:
        want = expected_events(first)
        deltas.read_until(lambda ms: covered(ms) >= want or not cluster.alive(), 300)
        assert cluster.alive(), cluster.logs()
        assert covered(deltas.messages) == want, cluster.logs()
        view = ProfileView()
        assert Applied.GAP not in {view.apply(d) for d in deltas_of(deltas.read_until_quiet(5, 60))}
        reference = reference_at(first, newest_ts(first) - lateness)
        assert_profiles_match(view.profiles, reference, params, 1e-4, late_users=set(reference))

        # Lose process 1 in the middle of a burst; process 0 cannot go on without it.
        produce(kafka, topics.events, burst)
        want_all = expected_events(generated)
        deltas.read_until(lambda ms: covered(ms) >= want + (want_all - want) // 4, 300)
        cluster.processes[1].send_signal(signal.SIGKILL)
        cluster.processes[0].wait(timeout=60)
        assert covered(deltas.messages) < want_all, "the kill must land mid-burst"
        written_before_restart = len(deltas.read_until(lambda ms: False, timeout_s=3))

        cluster.start()  # both again, on the same recovery directories
        deltas.read_until(lambda ms: covered(ms) >= want_all or not cluster.alive(), 400)
        assert cluster.alive(), cluster.logs()
        messages = deltas.read_until_quiet(6, 120)
    finally:
        cluster.stop()
        deltas.close()
    assert covered(deltas.messages) == want_all  # every event, none lost
    # Resumed from the snapshots (the first half was snapshotted while the cluster idled):
    # starting over would redo every event, as a lost recovery partition would.
    redone = sum(len(d.event_ids) for d in deltas_of(messages[written_before_restart:]))
    assert redone <= want_all - want, (redone, want_all, want)
    view = ProfileView()
    outcomes = [view.apply(d) for d in deltas_of(messages)]
    assert Applied.GAP not in outcomes  # no version missing for a consumer that saw it all
    reference = reference_at(generated, newest_ts(generated) - lateness)
    assert_profiles_match(view.profiles, reference, params, 1e-4, late_users=set(reference))
