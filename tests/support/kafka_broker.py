"""A real single-node Apache Kafka broker (KRaft mode) for the test suite.

The broker jars come from Maven Central through Maven (``tests/kafka/pom.xml``) and are
cached under ``$PROFILESTREAM_CACHE`` (default ``~/.cache/profilestream``), so only the first
run downloads them. Each test session formats a fresh log directory, starts the broker on
free loopback ports with the machine's JDK, and stops it at the end.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.server_process import ServerProcess

HERE = Path(__file__).parent / "kafka"
KAFKA_VERSION = "4.1.1"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


def single_node_settings(data: Path) -> list[str]:
    """Broker settings every single-node test broker shares, whatever its listeners."""
    return [
        f"log.dirs={data}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        # One partition each, not 50: on a busy 2-core machine a fresh broker took minutes
        # to load 50 coordinator partitions, and a flow stopped meanwhile hung on closing.
        "offsets.topic.num.partitions=1",
        "transaction.state.log.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("PROFILESTREAM_CACHE", Path.home() / ".cache" / "profilestream"))


def ensure_jars() -> Path:
    """Download (once) the broker and its dependencies; return the folder of jars."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    if libs.is_dir() and any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker jars")
    staging = libs.with_name(f"libs.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(HERE / "pom.xml"),
            "dependency:copy-dependencies",
            f"-Dkafka.version={KAFKA_VERSION}",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)  # atomic: a half-finished download never looks complete
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KafkaBroker(ServerProcess):
    """Start and stop one KRaft broker+controller on loopback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "broker.log"
        super().__init__()

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("a JDK (java) is needed to run the Kafka broker")
        return [
            java,
            "-Xms256m",
            "-Xmx768m",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def start(self, timeout_s: float = 90.0, *, fresh: bool = True) -> None:
        """Start the broker; ``fresh=False`` restarts a stopped one on its existing data."""
        libs = ensure_jars()
        data = self.workdir / "data"
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    *single_node_settings(data),
                    # Compact soon after a segment rolls, so erasure tests need not wait 15 s.
                    "log.cleaner.backoff.ms=500",
                ]
            )
            + "\n"
        )
        if fresh:
            subprocess.run(
                self._java(libs, STORAGE_TOOL, "format", "-t", _cluster_id(), "-c", str(config)),
                check=True,
                capture_output=True,
            )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._java(libs, MAIN_CLASS, str(config)), stdout=log, stderr=subprocess.STDOUT
            )
        self._await({"bootstrap.servers": self.bootstrap, "log_level": 0}, timeout_s)

    def _await(self, client: dict[str, Any], timeout_s: float, name: str = "Kafka broker") -> None:
        """Wait until the started broker lists its topics to a client of this configuration."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        admin = AdminClient(client)
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log_tail()}")
            try:
                admin.list_topics(timeout=2)
                return
            except Exception:
                time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{name} did not answer within {timeout_s}s: {tail}")

    def create_topic(
        self, name: str, partitions: int = 3, config: dict[str, str] | None = None
    ) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)

    def throttle_producer(self, client_id: str, bytes_per_s: int) -> None:
        """A Kafka client quota: the broker delays this client's produce requests to keep
        it under ``bytes_per_s`` (Kafka's own ``kafka-configs.sh``, run from the jars)."""
        command = self._java(
            ensure_jars(), "kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap,
            "--alter", "--add-config", f"producer_byte_rate={bytes_per_s}",
            "--entity-type", "clients", "--entity-name", client_id,
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-configs failed: {done.stdout}{done.stderr}")


def _cluster_id() -> str:
    """A random Kafka cluster id: 16 bytes in URL-safe base64 without padding, not starting
    with "-" (the storage tool would read it as an option)."""
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster


def send(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """Produce one message, waiting for librdkafka to drain its queue when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def produce_all(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> None:
    """Produce ``(key, value)`` messages in order and wait until every one is delivered."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for key, value in messages:
        send(producer, topic, key, value)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not deliver every message to {topic}")


def kafka_flow_args(
    bootstrap: str, events: str, deltas: str, dlq: str, workers: int, metrics_port: int
) -> list[str]:
    """``profilestream run`` flags for a Kafka-to-Kafka flow on these topics."""
    return [
        "--source", "kafka", "--sink", "kafka", "--brokers", bootstrap,
        "--events-topic", events, "--deltas-topic", deltas, "--dlq-topic", dlq,
        "--workers", str(workers), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
