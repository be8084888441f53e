"""The command line as a user meets it: each job shows only its own options, secrets are
never flags, ``run`` ends with a summary and a busy port is a clear error, Ctrl-C stops a
tailing flow cleanly, and API keys are made, listed and revoked by ``profilestream api-key``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataflow.serve.auth import KeyRing, Scope, Verdict, read_keys
from dataflow.sim import generate_events
from tests.support import ROOT
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import TopicReader, Topics, produce, start_flow
from tests.support.server_process import stop_processes


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataflow", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_each_job_shows_only_its_own_options_and_no_secret_flags() -> None:
    run_help, serve_help = cli("run", "--help").stdout, cli("serve", "--help").stdout
    assert "--serve-" not in run_help and "--embed-batch-size" in run_help
    assert "--embed-batch-size" not in serve_help and "--window" not in serve_help
    assert "--serve-keys-file" in serve_help and "--brokers" in serve_help
    assert "--pii-secret" not in run_help + serve_help
    assert cli("run", "--pii-secret", "x").returncode == 2  # not a flag at all


def test_run_ends_with_a_summary_and_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps(
            {
                "event_id": f"e{i}",
                "user_id": f"u{i % 3}",
                "ts": 1_700_000_000_000 + i,
                "type": "login",
            }
        )
        for i in range(20)
    ]
    events.write_text("\n".join([*lines, "not json"]) + "\n")
    done = cli("run", "--input-path", str(events), "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    summary = done.stderr[done.stderr.index("profilestream run done") :]
    assert "events" in summary and " 20 " in summary
    assert "invalid_json 1" in summary
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        failed = cli("run", "--input-path", str(events), "--output-dir", str(tmp_path / "o2"),
                     "--metrics-port", port)  # fmt: skip
    assert failed.returncode == 2
    assert f"cannot serve metrics on port {port}" in failed.stderr
    assert "panicked" not in failed.stderr and "Traceback" not in failed.stderr


def test_api_keys_are_made_listed_and_revoked(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    made = cli("api-key", "add", "--keys-file", str(path), "--id", "crm",
               "--scope", "profiles:read", "--expires", "2999-01-01")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret not in path.read_text()  # only its digest is kept
    assert path.stat().st_mode & 0o077 == 0
    ring = KeyRing(path, poll_s=0)
    assert ring.verdict(f"Bearer {secret}", Scope.PROFILES) == (Verdict.OK, "crm")
    assert ring.verdict(f"Bearer {secret}", Scope.PRIVACY)[0] is Verdict.FORBIDDEN
    assert cli("api-key", "add", "--keys-file", str(path), "--id", "crm",
               "--scope", "segments:read").returncode == 1  # fmt: skip
    assert (
        "crm\tprofiles:read\texpires 2999"
        in cli("api-key", "list", "--keys-file", str(path)).stdout
    )
    assert cli("api-key", "revoke", "--keys-file", str(path), "--id", "crm").returncode == 0
    assert read_keys(path)[0].revoked
    assert KeyRing(path).verdict(f"Bearer {secret}", Scope.PROFILES)[0] is Verdict.UNAUTHENTICATED


@pytest.mark.kafka
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_a_tailing_flow_cleanly(
    kafka: KafkaBroker, tmp_path: Path, workers: int
) -> None:
    """SIGINT while the flow tails Kafka (inside a source's read, most of the time): the
    summary, exit status 130, and no traceback or Rust panic."""
    topics = Topics.create(kafka)
    produce(kafka, topics.events, list(generate_events(2000, 100, seed=4)))
    log = tmp_path / "run.log"
    flow = start_flow(kafka, topics, log, free_port(), "--workers", str(workers))
    deltas = TopicReader(kafka, topics.deltas)
    try:
        deltas.read_until(lambda ms: len(ms) > 0, 120, flow)
        assert deltas.messages, log.read_text()[-3000:]
        time.sleep(1.0)  # tailing: reading an empty partition, a timer or two
        flow.send_signal(signal.SIGINT)
        code = flow.wait(60)
    finally:
        deltas.close()
        stop_processes(flow)
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "profilestream run interrupted after" in text
    assert "panicked" not in text and "Traceback" not in text, text[-3000:]
