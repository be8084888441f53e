"""The trivial keyed Bytewax flow: what Bytewax itself allows, as the benchmarks' speed of light.

Parse each JSON line, key it by user, count the user's events, write one line per event --
the least a keyed stream job can do -- either per item (``map``, ``key_on``,
``stateful_map``: how a Bytewax user writes it first) or batched (``flat_map_batch``,
``stateful_batch``). Each output line ends with the wall-clock millisecond it was made, so
the benchmark measures it the way it measures the profile flow: events over the span from
the first output to the last.

``--state-bytes N`` (item mode only) keeps the count in an N-byte state, made anew at every event
as a re-encoded state is, and ``--recovery-dir`` snapshots it every 5 s as the profile flow
does: what Bytewax itself needs to hold N bytes per user (``benchmarks/state_bench.py``).

    python benchmarks/trivial_flow.py --mode item --input events.jsonl --output out.txt
    python benchmarks/trivial_flow.py --mode batch --brokers HOST:PORT --topic in --out-topic out
    python benchmarks/trivial_flow.py --input events.jsonl --output out.txt \
        --state-bytes 2016 --recovery-dir recovery/
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSink, FileSource
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main


def _user(line: str | bytes) -> str:
    try:
        return str(json.loads(line)["user_id"])
    except (ValueError, KeyError, TypeError):
        return "bad"


def _line(user: str, count: int) -> str:
    return f"{user} {count} {time.time_ns() // 1_000_000}"


class _Count(op.StatefulBatchLogic[str, str, int]):
    def __init__(self, resume: int | None) -> None:
        self.count = resume or 0

    def on_batch(self, values: list[str]) -> tuple[list[str], bool]:
        out = []
        for user in values:
            self.count += 1
            out.append(_line(user, self.count))
        return out, op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> int:
        return self.count


def counted(mode: str, raw: Stream[Any], state_bytes: int = 0) -> Stream[tuple[str, str]]:
    """``(user, "user count ms")`` for every raw line or message value; in item mode with
    ``state_bytes``, each user's state is that many bytes (the count in the first eight)."""
    if mode == "item":
        keyed = op.key_on("key", op.map("parse", raw, _user), lambda user: user)

        def count(state: int | None, user: str) -> tuple[int, str]:
            state = (state or 0) + 1
            return state, _line(user, state)

        def count_in_bytes(state: bytes | None, user: str) -> tuple[bytes, str]:
            n = int.from_bytes(state[:8], "little") + 1 if state else 1
            return n.to_bytes(8, "little") + bytes(state_bytes - 8), _line(user, n)

        if state_bytes > 8:
            return op.stateful_map("count", keyed, count_in_bytes)
        return op.stateful_map("count", keyed, count)
    users = op.flat_map_batch("parse", raw, lambda batch: [(u, u) for u in map(_user, batch)])
    return op.stateful_batch("count", users, _Count)


def build(args: argparse.Namespace) -> Dataflow:
    flow = Dataflow("trivial")
    if args.brokers:
        kafka = kop.input("in", flow, brokers=[args.brokers], topics=[args.topic], tail=False)
        values = op.map("value", kafka.oks, lambda m: m.value)
        out = counted(args.mode, values, args.state_bytes)
        messages = op.map("msg", out, lambda kv: KafkaSinkMessage(kv[0].encode(), kv[1].encode()))
        kop.output("out", messages, brokers=[args.brokers], topic=args.out_topic)
    else:
        out = counted(args.mode, op.input("in", flow, FileSource(args.input)), args.state_bytes)
        op.output("out", out, FileSink(args.output))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("item", "batch"), default="item")
    parser.add_argument("--input", type=Path, help="JSONL file (file mode)")
    parser.add_argument("--output", type=Path, help="output file (file mode)")
    parser.add_argument("--brokers", help="Kafka bootstrap servers (Kafka mode)")
    parser.add_argument("--topic", help="input topic (Kafka mode)")
    parser.add_argument("--out-topic", help="output topic (Kafka mode)")
    parser.add_argument("--state-bytes", type=int, default=0, help="bytes of state per user")
    parser.add_argument("--recovery-dir", type=Path, help="snapshot every 5 s into this folder")
    args = parser.parse_args()
    if args.state_bytes and args.mode != "item":
        parser.error("--state-bytes keeps a state per item: use it with --mode item")
    recovery = None
    if args.recovery_dir is not None:
        if not args.recovery_dir.exists():
            args.recovery_dir.mkdir(parents=True)
            init_db_dir(args.recovery_dir, 1)
        recovery = RecoveryConfig(str(args.recovery_dir))
    cli_main(
        build(args),
        workers_per_process=1,
        epoch_interval=timedelta(seconds=5) if recovery else None,  # the profile flow's
        recovery_config=recovery,
    )


if __name__ == "__main__":
    main()
