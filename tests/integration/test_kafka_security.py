"""Kafka security passthrough against a real broker that speaks only SASL_SSL to clients.

The broker (:mod:`tests.support.kafka_secure`) authenticates with SCRAM-SHA-512 over TLS, with a
certificate from a throwaway CA made by ``keytool``. The flow reaches it through nothing but
``--kafka-config-file`` (``Config.kafka_config_file``): five librdkafka properties, with
hostname verification left at librdkafka's default (on). Its deltas are read back as
``serve`` reads them, by a consumer group given the same file's properties.

The negative controls show that the broker refuses what it should, so that the positive test
could not pass against an open broker: the flow with a wrong password (in a subprocess, as
the Bytewax source retries forever) writes nothing, and single clients with no CA, another
CA, a wrong password, another SCRAM mechanism, a certificate that does not name the address
dialled, or plaintext deliver nothing -- each beside a positive control that does.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from dataflow.config import Config
from dataflow.flow import build_flow
from operators.profile import delta_from_json, materialize
from tests.support import ROOT
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.kafka_flow import Topics
from tests.support.kafka_secure import SecureKafkaBroker, make_ca, secure_kafka, write_properties

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

__all__ = ["secure_kafka"]  # the session fixture, imported so that pytest finds it here

T0 = 1_717_200_000_000
#: Users and how many events each sends; a delta per event (emit interval 0).
EVENTS_PER_USER = {"alice": 3, "bob": 5, "chen": 4}
N_EVENTS = sum(EVENTS_PER_USER.values())


def flow_values(broker: SecureKafkaBroker, topics: Topics, properties: Path) -> dict[str, Any]:
    """The flow's :class:`Config` fields: Kafka in and out, security only from the file."""
    return {
        "source": "kafka",
        "sink": "kafka",
        "brokers": broker.bootstrap,
        **topics.config_values(),
        "kafka_config_file": str(properties),
        "kafka_tail": False,
        "emit_interval_ms": 0,
    }


def flow_config(values: Mapping[str, Any]) -> Config:
    return Config(**{**values, "kafka_config_file": Path(values["kafka_config_file"])})


def produce_events(broker: SecureKafkaBroker, topic: str) -> None:
    """Every user's events, keyed by user, with the right credentials."""
    producer = Producer(broker.client_config({"linger.ms": "20"}))
    for i in range(max(EVENTS_PER_USER.values())):
        for user, count in EVENTS_PER_USER.items():
            if i < count:
                event = {"event_id": f"{user}-{i}", "user_id": user, "ts": T0 + i * 1000,
                         "type": "view", "item_id": f"i{i}", "category": "shoes"}  # fmt: skip
                producer.produce(topic, key=user.encode(), value=json.dumps(event).encode())
    assert producer.flush(30) == 0, "the events did not reach the secured broker"


def stored(broker: SecureKafkaBroker, topic: str) -> int:
    """How many messages the topic holds (its high watermarks), asked with the right settings."""
    consumer = Consumer(broker.client_config({"group.id": uuid.uuid4().hex}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def consume(bootstrap: str, properties: Mapping[str, str], topic: str, count: int) -> list[Message]:
    """Up to ``count`` messages of ``topic`` from the start, read by a new consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"security-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            **properties,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while len(messages) < count and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
    finally:
        consumer.close()
    return messages


def run_secure_flow(broker: SecureKafkaBroker, tmp_path: Path) -> tuple[Config, Topics, Path]:
    """Produce the events to fresh topics and run the flow over them with only a properties
    file for security; returns its config, the topics and the file."""
    properties = write_properties(tmp_path / "kafka.properties", broker.security_properties())
    topics = Topics.create(broker)
    produce_events(broker, topics.events)
    config = flow_config(flow_values(broker, topics, properties))
    run_main(build_flow(config, encoder=HashEncoder(), sentiment=WordListSentiment()))
    return config, topics, properties


def test_the_flow_runs_on_a_sasl_ssl_broker_with_only_a_properties_file(
    secure_kafka: SecureKafkaBroker, tmp_path: Path
) -> None:
    config, topics, _ = run_secure_flow(secure_kafka, tmp_path)
    assert set(config.kafka_properties()) == {
        "security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password",
        "ssl.ca.location",
    }  # fmt: skip

    # Read back as `serve` does: a consumer group given the same file's properties.
    messages = consume(secure_kafka.bootstrap, config.kafka_properties(), topics.deltas, N_EVENTS)
    deltas = [delta_from_json(m.value() or b"") for m in messages]
    assert all(m.key() == d.user_id.encode() for m, d in zip(messages, deltas, strict=True))
    assert len(deltas) == N_EVENTS == stored(secure_kafka, topics.deltas)
    for user, count in EVENTS_PER_USER.items():
        assert [d.version for d in deltas if d.user_id == user] == list(range(1, count + 1))
    profiles = materialize(deltas)
    assert {user: p.version for user, p in profiles.items()} == EVENTS_PER_USER
    assert {user: p.fields["counts"] for user, p in profiles.items()} == {
        user: {"view": count} for user, count in EVENTS_PER_USER.items()
    }
    assert stored(secure_kafka, topics.dlq) == 0


def test_serve_reads_a_sasl_ssl_deltas_topic_with_the_same_properties_file(
    secure_kafka: SecureKafkaBroker, tmp_path: Path
) -> None:
    from tests.integration.test_serve import ServeProcess, caught_up_with, fetch

    _, topics, properties = run_secure_flow(secure_kafka, tmp_path)
    store = f"sqlite:///{tmp_path / 'profiles.db'}"
    serve = ServeProcess(
        store,
        secure_kafka,
        topics.deltas,
        topics.segments,
        tmp_path / "serve.log",
        "--kafka-config-file",
        str(properties),
    )
    try:
        serve.wait_until(caught_up_with(len(EVENTS_PER_USER)), timeout_s=60)
        for user, count in EVENTS_PER_USER.items():
            status, body = fetch(f"{serve.url}/users/{user}")
            assert status == 200 and body["version"] == count, body
    finally:
        serve.stop(signal.SIGTERM)


#: Runs the flow of a JSON object of :class:`Config` fields (argv[1]) until it ends.
FLOW_SCRIPT = """
import json, sys
from bytewax.testing import run_main
from dataflow.flow import build_flow
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.integration.test_kafka_security import flow_config
config = flow_config(json.loads(sys.argv[1]))
run_main(build_flow(config, encoder=HashEncoder(), sentiment=WordListSentiment()))
"""


def test_the_flow_with_a_wrong_password_delivers_nothing(
    secure_kafka: SecureKafkaBroker, tmp_path: Path
) -> None:
    wrong = {**secure_kafka.security_properties(), "sasl.password": "not-the-password"}
    properties = write_properties(tmp_path / "kafka.properties", wrong)
    topics = Topics.create(secure_kafka)
    produce_events(secure_kafka, topics.events)  # there is work, should it get in
    log_path = tmp_path / "flow.log"
    values = json.dumps(flow_values(secure_kafka, topics, properties))
    with log_path.open("wb") as log:
        flow = subprocess.Popen(
            [sys.executable, "-c", FLOW_SCRIPT, values], cwd=ROOT, stdout=log, stderr=log
        )
    needle = "Authentication failed during authentication due to invalid credentials"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and flow.poll() is None:
            if needle in log_path.read_text(errors="replace"):
                time.sleep(3)  # give it a moment to get anything through, were it to
                break
            time.sleep(0.2)
    finally:
        flow.kill()
        flow.wait()
    log_text = log_path.read_text(errors="replace")
    assert needle in log_text, log_text[-3000:]
    for topic in (topics.deltas, topics.dlq):
        assert stored(secure_kafka, topic) == 0


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PEM of a CA that did not sign the broker's certificate."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), "other-ca-password", "some other CA")


NO_SECURITY: dict[str, str | None] = {
    "security.protocol": "PLAINTEXT",
    "sasl.mechanisms": None,
    "sasl.username": None,
    "sasl.password": None,
    "ssl.ca.location": None,
}
TLS_FAILS = "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"


@dataclass(frozen=True)
class Probe:
    """A client that changes ``changes`` of the right settings and dials ``listener``."""

    changes: Mapping[str, str | None]
    refused_with: str | None  # the error it must report; None: it must deliver
    listener: str = "client"  # "client", "alias" (not in the certificate) or "controller"


PROBES = {
    "right settings deliver": Probe({}, None),
    "no CA": Probe({"ssl.ca.location": None}, TLS_FAILS),
    "another CA": Probe({"ssl.ca.location": "OTHER_CA"}, TLS_FAILS),
    "wrong password": Probe({"sasl.password": "not-the-password"}, "Authentication failed"),
    "unknown user": Probe({"sasl.username": "mallory"}, "Authentication failed"),
    "SCRAM-SHA-256": Probe({"sasl.mechanisms": "SCRAM-SHA-256"}, "Unsupported SASL mechanism"),
    "PLAINTEXT": Probe(NO_SECURITY, "brokers are down"),
    "PLAINTEXT on the controller port": Probe(
        NO_SECURITY, "Required feature not supported by broker", listener="controller"
    ),
    "address not in the certificate": Probe({}, TLS_FAILS, listener="alias"),
    "same, hostname check off, delivers": Probe(
        {"ssl.endpoint.identification.algorithm": "none"}, None, listener="alias"
    ),
}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Outcome:
    delivered: bool
    errors: list[str]  # reported to error_cb
    logs: list[str]  # librdkafka's log lines


def probe(config: dict[str, Any], topic: str, refused_with: str | None) -> Outcome:
    """Produce one message and say what became of it.

    Waits for the delivery, or for an error or log line with ``refused_with`` in it, then
    drops what is still queued.
    """
    logs = _Lines()
    logger = logging.getLogger("tests.kafka_security.probe")
    logger.propagate = False
    logger.addHandler(logs)
    errors: list[str] = []
    on_error: Callable[[KafkaError], None] = lambda error: errors.append(str(error))  # noqa: E731
    delivered: list[bool] = []
    try:
        producer = Producer({**config, "error_cb": on_error, "logger": logger})
        producer.produce(topic, b"probe", on_delivery=lambda e, _: delivered.append(e is None))
        deadline = time.monotonic() + 20
        while not delivered and time.monotonic() < deadline:
            producer.poll(0.1)
            if refused_with and any(refused_with in line for line in errors + logs.lines):
                break
        producer.purge()
        producer.flush(5)
    finally:
        logger.removeHandler(logs)
    return Outcome(delivered[:1] == [True], errors, logs.lines)


@pytest.mark.parametrize("name", list(PROBES))
def test_a_client_needs_the_right_ca_credentials_and_protocol(
    secure_kafka: SecureKafkaBroker, other_ca: Path, name: str
) -> None:
    case = PROBES[name]
    bootstrap = {
        "client": secure_kafka.bootstrap,
        "alias": secure_kafka.alias_bootstrap,
        "controller": f"127.0.0.1:{secure_kafka.controller_port}",
    }[case.listener]
    if bootstrap is None:
        pytest.skip("127.0.0.2 cannot be bound here, so there is no listener off the certificate")
    changes = {k: str(other_ca) if v == "OTHER_CA" else v for k, v in case.changes.items()}
    config = secure_kafka.client_config({**changes, "bootstrap.servers": bootstrap})
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    secure_kafka.create_topic(topic, partitions=1)

    outcome = probe(config, topic, case.refused_with)

    if case.refused_with is None:
        assert outcome.delivered and not outcome.errors, outcome
        assert stored(secure_kafka, topic) == 1
        return
    assert not outcome.delivered
    assert any(case.refused_with in line for line in outcome.errors + outcome.logs), outcome
    assert stored(secure_kafka, topic) == 0
