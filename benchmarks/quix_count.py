"""The peer a user would otherwise pick: Quix Streams counting each user's events.

A bare stateful count per message key (the user id the events are keyed by), in Quix's
RocksDB state, JSON in (Quix's default deserializer: each event parsed, as every other flow
here parses it) and JSON out -- one message per event, like the trivial Bytewax flow -- each
stamped with the wall-clock millisecond it was made, so :mod:`benchmarks.flow_bench`
measures it as it measures the others: events over the span from the first output to the
last. It runs in its own virtualenv (Quix Streams pins a confluent-kafka older than ours:
``flow_bench`` makes it under the cache folder) and imports nothing of this project.

    quix/bin/python benchmarks/quix_count.py --brokers HOST:PORT --topic in --out-topic out \\
        --count 240000 --state-dir /tmp/quix-state
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from quixstreams import Application, State


def count(value: Any, state: State) -> dict[str, Any]:
    total = state.get("count", 0) + 1
    state.set("count", total)
    return {"count": total, "ms": time.time_ns() // 1_000_000}


def skip_bad_messages(exc: Exception, message: Any, logger: Any) -> bool:
    """A malformed event is skipped (the stream has some, by design): a bare count of the
    rest, as a user would first write it."""
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--count", type=int, required=True, help="stop after this many events")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    app = Application(
        broker_address=args.brokers,
        consumer_group=f"quix-count-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        on_consumer_error=skip_bad_messages,
    )
    events = app.topic(args.topic, key_deserializer="str", value_deserializer="json")
    out = app.topic(args.out_topic, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(events)
    sdf = sdf.apply(count, stateful=True)
    sdf.to_topic(out)
    app.run(count=args.count, timeout=30.0, collect=False)


if __name__ == "__main__":
    main()
