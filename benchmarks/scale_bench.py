"""Scale-out: one Bytewax process against two, on the same 4-partition topic.

    python benchmarks/scale_bench.py [--events 240000] [--runs 2] [--out FILE]

Both ways run as the StatefulSet runs them (``python -m bytewax.run
dataflow.flow:flow_from_env -w 1``, recovery on, ``tests/support/kafka_flow.py``'s
``BytewaxCluster``), over a backlog of flow_bench's no-text stream (catalog vectors served)
on a real broker, the broker sharing the machine's cores. events/s is the events the deltas
cover over the span of their ``processed_ms``; the ratio is two processes over one, in the
same run, alternating. Prints a table, writes JSON (default
``benchmarks/results/<date>-scale_bench.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import dated_result, fmt, machine_info, print_header
from benchmarks.flow_bench import build_streams, served_catalog
from dataflow.config import Config
from operators.profile import delta_from_json
from operators.text.embedding import Embedder
from tests.support.kafka_broker import KafkaBroker, produce_all
from tests.support.kafka_flow import BytewaxCluster, TopicReader, Topics, expected_events

PARTITIONS = 4


class Coverage:
    """The distinct events the deltas read so far cover, and when each delta was made."""

    def __init__(self) -> None:
        self.events: set[tuple[str, str]] = set()
        self.processed: list[int] = []
        self._seen = 0

    def update(self, messages: list[Message]) -> int:
        for message in messages[self._seen :]:
            value = message.value()
            if value is None:  # the Kafka tombstone after an erased user's last delta
                continue
            delta = delta_from_json(value)
            self.events.update((delta.user_id, e) for e in delta.event_ids)
            self.processed.append(delta.processed_ms)
        self._seen = len(messages)
        return len(self.events)


def run_cluster(
    broker: KafkaBroker, events_topic: str, processes: int, workdir: Path, items: Path, want: int
) -> dict[str, float]:
    """Read the whole topic with ``processes`` processes; events/s from the deltas."""
    topics = Topics.create(broker, events=events_topic)
    cluster = BytewaxCluster(
        broker, topics, workdir, processes=processes, recovery_partitions=8,
        env={"ITEM_VECTORS_DIR": str(items)},
    )  # fmt: skip
    reader = TopicReader(broker, topics.deltas)
    coverage = Coverage()
    started = time.monotonic()
    cluster.start()
    try:
        reader.read_until(lambda ms: coverage.update(ms) >= want, 600)
        reader.read_until(lambda ms: False, 3)
    finally:
        cluster.stop()
        reader.close()
    covered = coverage.update(reader.messages)
    if covered < want:
        raise RuntimeError(f"{processes} process(es) covered {covered} of {want} events")
    span_s = (max(coverage.processed) - min(coverage.processed)) / 1000
    return {
        "processes": processes,
        "events": covered,
        "events_per_s": covered / span_s,
        "span_s": span_s,
        "wall_s": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=240_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=dated_result("scale_bench"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    no_text, _ = build_streams(args.events, 0, args.users, args.seed)
    model = Embedder(cache_size=0, batch_size=Config().embed_batch_size)
    served_catalog(model, args.seed, workdir / "items")
    valid = expected_events(no_text.events)  # duplicates and malformed lines cover nothing
    (workdir / "kafka").mkdir()
    broker = KafkaBroker(workdir / "kafka")
    broker.start()
    rows = []
    try:
        topic = f"events-{uuid.uuid4().hex[:8]}"
        broker.create_topic(topic, partitions=PARTITIONS)
        produce_all(broker.bootstrap, topic, ((e.user_id.encode(), e.line) for e in no_text.events))
        for run in range(args.runs):
            for processes in (1, 2):
                folder = workdir / f"run-{run}-{processes}"
                folder.mkdir()
                row = run_cluster(broker, topic, processes, folder, workdir / "items", valid)
                rows.append({"run": run, **row})
                print(f"run {run}, {processes} process(es): {row['events_per_s']:,.0f} events/s")
    finally:
        broker.stop()
    print_header(f"{'run':>3} {'processes':>9} {'events/s':>10} {'ratio 2/1':>9}")
    for row in rows:
        one = next(r for r in rows if r["run"] == row["run"] and r["processes"] == 1)
        row["ratio"] = row["events_per_s"] / one["events_per_s"]
        print(
            f"{row['run']:>3} {row['processes']:>9} {fmt(row['events_per_s']):>10} "
            f"{fmt(row['ratio'], 2):>9}"
        )
    settings = {"events": args.events, "users": args.users, "partitions": PARTITIONS}
    result = {"machine": machine_info(load_before), "settings": settings, "runs": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
