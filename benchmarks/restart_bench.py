"""How soon a restarted flow is back: process start to its first delta, on real Kafka.

    python benchmarks/restart_bench.py [--restarts 3] [--out FILE]

A real broker (the test suite's, see ``tests/support/kafka_broker.py``); the flow
(``profilestream run``, 2 workers, recovery every second) reads a generated stream with
text until it is caught up, is SIGKILLed, and starts again on its recovery directory
while new events arrive, ``--restarts`` times. For each start it records the seconds from
the process start to the first delta it sends, and, once running, from producing a small
burst to its first delta (the steady state, which the 1 s emit interval bounds from below).
A Kubernetes rolling restart or an OOM kill costs at least the first figure of output
freshness. Prints a table, writes JSON (default ``benchmarks/results/<date>-restart_bench.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import dated_result, fmt, machine_info, print_header
from dataflow.sim import generate_events
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.kafka_flow import TopicReader, Topics, produce, start_flow

BACKLOG, PER_RESTART, BURST = 2000, 300, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=dated_result("restart_bench"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="restart-bench-"))
    (work / "kafka").mkdir()
    broker = KafkaBroker(work / "kafka")
    broker.start()
    rows = []
    try:
        topics = Topics.create(broker)
        total = BACKLOG + PER_RESTART * args.restarts + BURST * (args.restarts + 1)
        events = list(generate_events(total, 300, seed=3))
        produce(broker, topics.events, events[:BACKLOG])
        recovery = ("--recovery-dir", str(work / "recovery"), "--snapshot-interval-s", "1")
        reader = TopicReader(broker, topics.deltas)
        sent = BACKLOG
        for run in range(args.restarts + 1):
            started = time.time()
            flow = start_flow(broker, topics, work / f"flow-{run}.log", free_port(), *recovery)
            seen = len(reader.messages)
            if run:  # traffic goes on while the flow restarts
                produce(broker, topics.events, events[sent : sent + PER_RESTART])
                sent += PER_RESTART
            first = _first_delta_after(reader, seen, started, flow)
            reader.read_until(lambda ms: False, 5, flow)  # caught up
            produced = time.time()
            seen = len(reader.messages)
            produce(broker, topics.events, events[sent : sent + BURST])
            sent += BURST
            steady = _first_delta_after(reader, seen, produced, flow)
            rows.append({"start": run, "first_delta_s": first, "steady_delta_s": steady})
            time.sleep(1.5)  # a snapshot or two, then the kill
            flow.send_signal(signal.SIGKILL)
            flow.wait()
        reader.close()
    finally:
        broker.stop()
    print_header(f"{'start':<10} {'first delta (s)':>16} {'steady delta (s)':>17}")
    for row in rows:
        label = "first" if row["start"] == 0 else f"restart {row['start']}"
        print(f"{label:<10} {fmt(row['first_delta_s'], 2):>16} {fmt(row['steady_delta_s'], 2):>17}")
    result = {"machine": machine_info(load_before), "starts": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _first_delta_after(
    reader: TopicReader, seen: int, since: float, flow: subprocess.Popen[bytes]
) -> float:
    """Seconds from ``since`` to the broker timestamp of the first delta sent after it."""

    def after(messages: list[Message]) -> list[Message]:
        return [m for m in messages[seen:] if m.timestamp()[1] >= since * 1000]

    reader.read_until(lambda ms: bool(after(ms)), 120, flow)
    found = after(reader.messages)
    if not found:
        raise RuntimeError("no delta within 120 s")
    return found[0].timestamp()[1] / 1000 - since


if __name__ == "__main__":
    main()
