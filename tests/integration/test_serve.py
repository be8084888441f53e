"""``profilestream serve``: the HTTP API in-process, then end to end on real Kafka and Redis.

The deltas and segment transitions are the real flow's (under ``bytewax.testing``, as
tests/flow/test_flow.py runs it), with a user deleted and coming back. The end-to-end tests
produce them to Kafka as the flow's Kafka sink does (a null-valued message after each JSON
tombstone), run ``serve`` as a process, compare every profile it serves with
``operators.profile.deltas.materialize`` and every segment size with the transitions, then stop it,
produce the rest (with a replayed suffix, as after a flow restart), restart it and check that
it read only the new messages and ends on the right profiles.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import uvicorn
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.config import Config, config_values
from dataflow.flow import build_flow
from dataflow.serve import build_app, openapi
from dataflow.serve.feeder import ConsumerStatus
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.models import ItemModels
from dataflow.serve.store import Batch, ProfileStore, SqliteStore
from operators.apps.segments import SegmentTransition, memberships_from_transitions
from operators.profile import (
    ProfileDelta,
    decode_vector,
    delta_from_json,
    delta_to_json,
    encode_vector,
    materialize,
    memory_fields,
)
from operators.recsys import (
    ItemInteraction,
    ScorerParams,
    load_item_model,
    save_item_model,
    train_item_model,
    update_memory,
)
from tests.flow.test_flow import CONFIG, T0, stream, with_origins
from tests.support import ROOT
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.kafka_broker import KafkaBroker, free_port, produce_all
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]  # the fixture, imported for pytest

DELETED = "u3"


@pytest.fixture(scope="module")
def flow_output() -> tuple[list[ProfileDelta], list[SegmentTransition]]:
    """The real flow's deltas and transitions: 7 users, one deleted who then comes back."""
    lines = stream(120)
    lines.append(json.dumps({"event_id": "del", "user_id": DELETED, "ts": T0 + 90_000_000,
                             "type": "delete_user"}))  # fmt: skip
    for i in range(5):
        lines.append(json.dumps({"event_id": f"back{i}", "user_id": DELETED, "type": "view",
                                 "ts": T0 + 90_000_001 + i, "item_id": "i1"}))  # fmt: skip
    deltas: list = []
    segments: list = []
    flow = build_flow(
        CONFIG,
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=TestingSource(with_origins(lines), batch_size=5),
        sinks={"deltas": TestingSink(deltas), "segments": TestingSink(segments)},
    )
    run_main(flow)
    decoded = [delta_from_json(v) for _, v in deltas]
    transitions = [msgspec_transition(v) for _, v in segments]
    assert any(d.kind == "tombstone" for d in decoded)
    assert transitions, "the default segment definitions should see someone enter"
    return decoded, transitions


def msgspec_transition(value: str | bytes) -> SegmentTransition:
    return msgspec.json.decode(value, type=SegmentTransition)


# -- the HTTP API, in-process ---------------------------------------------------------------


@contextmanager
def running_app(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port in a thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            status = response.status
            kind = response.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        body, status, kind = err.read(), err.code, err.headers.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body.decode()


def tiny_model(root: Path, version: str) -> None:
    seqs = [[ItemInteraction(i) for i in s] for s in (["a", "b", "c"], ["a", "b", "d"])] * 3
    save_item_model(train_item_model(seqs, params=ScorerParams(), version=version), root)


def shopper_delta(root: Path) -> ProfileDelta:
    """A full delta of a user who bought item "a", with the item model's memory fields."""
    model = load_item_model(root)
    memory = update_memory(None, model, "a", "purchase", T0)
    return ProfileDelta(
        "shopper", 1, "full", "s1", T0, ["s"], "m",
        changed={"category_affinity": {}, **memory_fields(memory)},
        interest=encode_vector(np.full(4, 0.5, np.float16)),
    )  # fmt: skip


@pytest.fixture
def api(
    flow_output: tuple[list[ProfileDelta], list[SegmentTransition]], tmp_path: Path
) -> Iterator[tuple[str, ProfileStore, Path, str]]:
    """The API (no keys: tests/integration/test_serve_access.py has them) and its
    operations app: (API URL, store, item model folder, operations URL)."""
    deltas, transitions = flow_output
    models_root = tmp_path / "models"
    tiny_model(models_root, "v1")
    store = SqliteStore(tmp_path / "profiles.db")
    store.apply(Batch([*deltas, *transitions, shopper_delta(models_root)]))
    metrics = ServeMetrics(store)
    models = ItemModels(models_root, 0.05, metrics)
    apps = build_app(store, metrics, None, models)
    with running_app(apps.api) as url, running_app(apps.ops) as ops:
        yield url, store, models_root, ops
    store.close()


def test_a_profile_is_served_as_the_deltas_materialise(
    api: tuple[str, ProfileStore, Path, str],
    flow_output: tuple[list[ProfileDelta], list[SegmentTransition]],
) -> None:
    url, *_ = api
    expected = materialize(flow_output[0])
    for user, profile in expected.items():
        status, body = fetch(f"{url}/users/{user}")
        assert status == 200
        assert (body["version"], body["incarnation"]) == (profile.version, profile.incarnation)
        assert body["fields"] == profile.fields
        assert "windows" in body["fields"] and "segments" in body["fields"]
        assert "interest" not in body
    user, profile = next(iter(expected.items()))
    status, body = fetch(f"{url}/users/{user}?interest=true")
    assert decode_vector(body["interest"]).tolist() == profile.interest.tolist()


def test_a_deleted_user_is_served_in_their_new_incarnation_and_unknown_ones_are_404(
    api: tuple[str, ProfileStore, Path, str],
) -> None:
    url, *_ = api
    status, body = fetch(f"{url}/users/{DELETED}")
    assert status == 200 and body["incarnation"].startswith("back")
    assert fetch(f"{url}/users/nobody") == (404, {"detail": "no profile for this user"})


def test_segment_sizes_follow_the_transitions(
    api: tuple[str, ProfileStore, Path, str],
    flow_output: tuple[list[ProfileDelta], list[SegmentTransition]],
) -> None:
    url, *_ = api
    members = memberships_from_transitions(flow_output[1])
    sizes: dict[str, int] = {}
    for segments in members.values():
        for name in segments:
            sizes[name] = sizes.get(name, 0) + 1
    assert sizes
    for name, size in sizes.items():
        assert fetch(f"{url}/segments/{name}/size") == (200, {"segment": name, "size": size})
    _, listed = fetch(f"{url}/segments")
    assert {s["segment"]: s["size"] for s in listed if s["size"]} == sizes
    assert fetch(f"{url}/segments/nothing/size")[1]["size"] == 0


def test_recommendations_come_from_the_served_model_and_follow_a_new_version(
    api: tuple[str, ProfileStore, Path, str],
) -> None:
    url, _, models_root, ops = api
    status, body = fetch(f"{url}/users/shopper/recommendations?k=2")
    assert status == 200
    assert (body["model_version"], body["profile_version"], body["cold"]) == ("v1", 1, False)
    assert [item["item_id"] for item in body["items"]] == ["b", "c"]  # "a" was bought
    status, cold = fetch(f"{url}/users/nobody/recommendations?k=1")
    assert status == 200 and cold["cold"] and cold["items"][0]["item_id"] == "a"
    assert fetch(f"{url}/users/shopper/recommendations?k=0")[0] == 422
    assert fetch(f"{url}/users/shopper/recommendations?k=x")[0] == 422
    tiny_model(models_root, "v2")  # hot reload: picked up within the poll interval
    deadline = time.monotonic() + 10
    while fetch(f"{url}/users/shopper/recommendations")[1]["model_version"] != "v2":
        assert time.monotonic() < deadline, "the new item model version was not picked up"
        time.sleep(0.05)
    assert fetch(f"{ops}/healthz")[1]["item_model"] == "v2"


def test_health_metrics_and_openapi(api: tuple[str, ProfileStore, Path, str]) -> None:
    url, store, _, ops = api
    status, health = fetch(f"{ops}/healthz")
    assert status == 200
    assert health["status"] == "ok" and health["store"] == "sqlite"
    assert health["users"] == store.size() and health["consumer"] is None
    fetch(f"{url}/users/u1")
    status, text = fetch(f"{ops}/metrics")
    assert (
        'profilestream_serve_request_seconds_count{route="/users/{user_id}",status="200"}' in text
    )
    assert f"profilestream_serve_store_users {float(store.size())}" in text
    status, spec = fetch(f"{url}/openapi.json")
    assert status == 200 and spec == json.loads(json.dumps(openapi()))
    assert set(spec["paths"]) >= {"/users/{user_id}", "/users/{user_id}/export", "/segments"}


class StuckFeeder:
    """A consumer whose status the test sets."""

    def __init__(self, status: ConsumerStatus) -> None:
        self._status = status

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...

    def status(self) -> ConsumerStatus:
        return self._status

    def exposition(self) -> bytes:
        return b'profilestream_serve_consumer_lag{topic="d",partition="0"} 7.0\n'


@pytest.mark.parametrize(
    ("running", "caught_up", "silent_s", "error", "status", "code"),
    [
        (True, True, 0.5, None, "ok", 200),
        (True, False, 0.5, None, "starting", 200),
        (True, True, 30.0, None, "unreachable", 200),  # alive, but not to be routed to
        (True, True, None, None, "unreachable", 200),
        (True, True, 0.5, "store: ConnectionError: down", "down", 503),
        (False, True, 0.5, None, "down", 503),
    ],
)
def test_health_follows_the_consumer(
    tmp_path: Path,
    running: bool,
    caught_up: bool,
    silent_s: float | None,
    error: str | None,
    status: str,
    code: int,
) -> None:
    store = SqliteStore(tmp_path / "p.db")
    feeder = StuckFeeder(
        ConsumerStatus(running, "all", 6, 7, {"d/0": 7}, caught_up, 0.1, error, silent_s)
    )
    with running_app(build_app(store, ServeMetrics(store), feeder).ops) as ops:
        got, health = fetch(f"{ops}/healthz")
        assert (got, health["status"], health["consumer"]["lag"]) == (code, status, 7)
        assert fetch(f"{ops}/readyz")[0] == (200 if status == "ok" else 503)
        assert (
            'profilestream_serve_consumer_lag{topic="d",partition="0"} 7.0'
            in fetch(f"{ops}/metrics")[1]
        )
    store.close()


def test_the_committed_openapi_file_is_current() -> None:
    committed = ROOT / "deploy" / "openapi.json"
    assert json.loads(committed.read_text()) == json.loads(json.dumps(openapi())), (
        "regenerate it: profilestream serve --print-openapi > deploy/openapi.json"
    )


def test_serve_settings_are_fields_of_the_one_config() -> None:
    env = {"PROFILESTREAM_SERVE_STORE": "redis://r:6379/0", "PROFILESTREAM_SERVE_CONSUME": "false"}
    config = Config(**config_values(env=env))
    assert (config.serve_store, config.serve_consume, config.serve_http_port) == (
        "redis://r:6379/0",
        False,
        8080,
    )
    with pytest.raises(ValueError, match="serve_batch_size"):
        Config(**config_values(env={"PROFILESTREAM_SERVE_BATCH_SIZE": "0"}))


# -- end to end: real Kafka, real Redis, serve as a process ---------------------------------


def kafka_messages(deltas: list[ProfileDelta]) -> list[tuple[bytes, bytes | None]]:
    """The deltas as the flow's Kafka sink writes them: a null value after a tombstone."""
    out: list[tuple[bytes, bytes | None]] = []
    for d in deltas:
        out.append((d.user_id.encode(), delta_to_json(d)))
        if d.kind == "tombstone":
            out.append((d.user_id.encode(), None))
    return out


class ServeProcess:
    """``python -m dataflow serve`` on a free port, logging to a file."""

    def __init__(
        self, store: str, kafka: KafkaBroker, deltas: str, segments: str, log: Path, *extra: str
    ):
        self.port, ops_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ops = f"http://127.0.0.1:{ops_port}"
        command = [
            sys.executable, "-m", "dataflow", "serve", "--serve-store", store, "--brokers",
            kafka.bootstrap, "--deltas-topic", deltas, "--segments-topic", segments,
            "--serve-http-port", str(self.port), "--serve-ops-port", str(ops_port),
            "--serve-batch-wait-ms", "10", *extra,
        ]  # fmt: skip
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)

    def wait_until(self, ready: Any, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited:\n{self.log.read_text()[-3000:]}"
            try:
                _, health = fetch(f"{self.ops}/healthz")
                if ready(health):
                    return health
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve not ready: {health}\n{self.log.read_text()[-3000:]}")

    def messages_read(self) -> dict[str, float]:
        _, text = fetch(f"{self.ops}/metrics")
        read = {}
        for line in text.splitlines():
            if line.startswith("profilestream_serve_messages_read_total{"):
                topic = line.split('topic="', 1)[1].split('"', 1)[0]
                read[topic] = float(line.rsplit(" ", 1)[1])
        return read

    def consumer_pid(self) -> int:
        """The pid of serve's consumer: the child multiprocessing spawned (not its resource
        tracker)."""
        pid = self.process.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
            if "spawn_main" in command:
                return int(child)
        raise AssertionError("serve has no consumer process")

    def stop(self, sig: int) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)


def _zombie(pid: int) -> bool:
    """Exited, not yet reaped (its parent is gone: init reaps it soon)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def caught_up_with(users: int) -> Any:
    def ready(health: dict[str, Any]) -> bool:
        consumer = health.get("consumer") or {}
        return (
            bool(consumer.get("caught_up"))
            and consumer.get("lag") == 0
            and (health.get("users") == users)
        )

    return ready


def check_served(url: str, deltas: list[ProfileDelta], transitions: list[SegmentTransition]):
    expected = materialize(deltas)
    for user, profile in expected.items():
        status, body = fetch(f"{url}/users/{user}?interest=1")
        assert status == 200, user
        assert (body["version"], body["fields"]) == (profile.version, profile.fields)
        assert decode_vector(body["interest"]).tolist() == profile.interest.tolist()
    sizes: dict[str, int] = {}
    for segments in memberships_from_transitions(transitions).values():
        for name in segments:
            sizes[name] = sizes.get(name, 0) + 1
    for name, size in sizes.items():
        assert fetch(f"{url}/segments/{name}/size")[1]["size"] == size, name


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_serve_on_kafka_resumes_from_its_store_after_a_restart(
    backend: str,
    kafka: KafkaBroker,
    flow_output: tuple[list[ProfileDelta], list[SegmentTransition]],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    deltas, transitions = flow_output
    tag = uuid.uuid4().hex[:8]
    deltas_topic, segments_topic = f"deltas-{tag}", f"segments-{tag}"
    kafka.create_topic(deltas_topic, partitions=3)
    kafka.create_topic(segments_topic, partitions=3)
    if backend == "sqlite":
        store = f"sqlite://{tmp_path / 'profiles.db'}"
    else:
        store = request.getfixturevalue("redis_url") + f"?prefix=e2e{tag}:"
    half = len(deltas) // 2
    first, rest = deltas[:half], deltas[half:]
    replayed = first[-15:]  # a flow restart re-sends what followed its last snapshot
    first_msgs = kafka_messages(first)
    produce_all(kafka.bootstrap, deltas_topic, first_msgs)  # type: ignore[arg-type]
    t_msgs = [(t.user_id.encode(), msgspec.json.encode(t)) for t in transitions]
    produce_all(kafka.bootstrap, segments_topic, t_msgs[: len(t_msgs) // 2])

    log = tmp_path / "serve.log"
    serve = ServeProcess(store, kafka, deltas_topic, segments_topic, log)
    try:
        serve.wait_until(caught_up_with(len(materialize(first))))
        check_served(serve.url, first, transitions[: len(t_msgs) // 2])
        assert serve.messages_read() == {
            deltas_topic: len(first_msgs),
            segments_topic: len(t_msgs) // 2,
        }
        consumer = serve.consumer_pid()
    finally:
        # SQLite: killed outright; Redis: a clean stop (a killed group member holds its
        # partitions until the group's session times out, 45 s by default).
        serve.stop(signal.SIGKILL if backend == "sqlite" else signal.SIGTERM)
    # Its consumer goes with it, at once: no second writer beside the next serve's.
    deadline = time.monotonic() + 2
    while Path(f"/proc/{consumer}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{consumer}").exists() or _zombie(consumer), "an orphaned consumer"

    rest_msgs = kafka_messages(replayed + rest)
    produce_all(kafka.bootstrap, deltas_topic, rest_msgs)  # type: ignore[arg-type]
    produce_all(kafka.bootstrap, segments_topic, t_msgs[len(t_msgs) // 2 :])
    again = ServeProcess(store, kafka, deltas_topic, segments_topic, log)
    try:
        health = again.wait_until(caught_up_with(len(materialize(deltas))))
        check_served(again.url, deltas, transitions)
        # resumed from the store's offsets: only what was produced since was read
        assert again.messages_read() == {
            deltas_topic: len(rest_msgs),
            segments_topic: len(t_msgs) - len(t_msgs) // 2,
        }
        _, text = fetch(f"{again.ops}/metrics")
        assert 'profilestream_serve_deltas_total{result="stale"} 15.0' in text
        assert 'profilestream_serve_kafka_tombstones_total{result="absent"}' in text
        assert health["consumer"]["partitions"] == 6
        assert fetch(f"{again.url}/users/{DELETED}")[1]["incarnation"].startswith("back")
    finally:
        again.stop(signal.SIGTERM)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal
    assert again.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text()
