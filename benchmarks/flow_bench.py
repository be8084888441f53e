"""Throughput and event-to-delta latency of the real profilestream dataflow, vs a plain loop.

What: the dataflow runs as its own process (``python -m dataflow.cli run ...``), exactly as it
is deployed, over two generated streams -- ``no-text`` (search and review events removed) and
``20%-text`` (re-mixed so that 20% of the lines are searches or reviews) -- with file-to-file
and Kafka-to-Kafka I/O and 1 and 2 worker threads. A last Kafka case is open-loop: the flow is
already running and tailing while a producer sends events at a fixed rate, which is the only
honest way to measure latency (a pre-filled topic measures how long events sat in the backlog).

Why: to know what the Bytewax machinery (micro-batched embeddings, keyed state, workers) buys
over the loop a user would otherwise write -- parse, embed each event on its own, update a dict
of states -- and what it costs in latency. The plain loop runs in-process over the same lines
with the same ``Embedder`` and its cache, so only batching and the runtime differ.

How the numbers are made:

* throughput = valid events / (last delta's ``processed_ms`` - first delta's ``processed_ms``),
  which leaves out process start-up and model loading; the whole-process wall time is
  reported next to it;
* latency = ``processed_ms - ingest_ms`` of each delta; ``ingest_ms`` is the file read time or
  the Kafka message's CreateTime;
* results, with machine information, go to ``benchmarks/results/flow_bench.json``.

    python benchmarks/flow_bench.py            # 60k no-text / 30k 20%-text events, ~4 minutes
    python benchmarks/flow_bench.py --quick    # a fifth of that
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Runnable as `python benchmarks/flow_bench.py`: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from confluent_kafka import Consumer, Producer

from benchmarks.common import fmt, machine_info, package_version, print_header
from dataflow.config import Config
from dataflow.flow import profile_params
from dataflow.generator import GeneratedEvent, generate_events
from operators.deltas import ProfileDelta, delta_from_json, delta_to_json
from operators.embedding import Embedder, embedding_text
from operators.events import Event, parse_event
from operators.nlp import read_text
from operators.profile import UserState, apply_event
from operators.sentiment import load_sentiment_model
from tests.kafka_broker import KafkaBroker, free_port, kafka_flow_args, produce_all, send

ROOT = Path(__file__).resolve().parents[1]
TEXT_TYPES = frozenset({"search", "review"})
RESULTS = ROOT / "benchmarks" / "results" / "flow_bench.json"
FLOW_TIMEOUT_S = 600.0
FLOW_COMMAND = [sys.executable, "-m", "dataflow.cli", "run"]


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True)
class BenchStream:
    """A list of generated lines under a name; ``valid`` lines each make exactly one delta."""

    name: str
    events: list[GeneratedEvent]

    @property
    def valid(self) -> int:
        return sum(e.expected_reason is None for e in self.events)

    @property
    def bad(self) -> int:
        return len(self.events) - self.valid

    def text_share(self) -> float:
        return sum(_is_text(e) for e in self.events) / max(len(self.events), 1)


def _is_text(event: GeneratedEvent) -> bool:
    # Malformed lines are classified by the type they still carry, so a bad search counts as
    # text; lines that are not JSON objects count as non-text.
    try:
        data = json.loads(event.line)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") in TEXT_TYPES


def remix(name: str, pool: Sequence[GeneratedEvent], n: int, text_share: float) -> BenchStream:
    """The first ``n`` lines of ``pool`` with exactly ``text_share`` of them text events.

    Takes the first text lines and the first other lines and merges them in pool order, so
    every user's events stay in event-time order and a re-sent duplicate never precedes its
    original (both are of the same kind and the original comes first in the pool).
    """
    n_text = round(n * text_share)
    texts = [i for i, e in enumerate(pool) if _is_text(e)][:n_text]
    others = [i for i, e in enumerate(pool) if not _is_text(e)][: n - n_text]
    if len(texts) < n_text or len(others) < n - n_text:
        raise ValueError(f"pool of {len(pool)} lines is too small for {n} lines of {name}")
    return BenchStream(name, [pool[i] for i in sorted(texts + others)])


def build_streams(
    n_no_text: int, n_text: int, n_open: int, n_users: int, seed: int
) -> dict[str, BenchStream]:
    need_text = 0.2 * max(n_text, n_open)
    need_other = max(n_no_text, 0.8 * max(n_text, n_open))
    # The generator makes ~19% text lines; size the pool so both kinds have room to spare.
    pool_size = math.ceil(max(need_text / 0.15, need_other / 0.75))
    pool = list(generate_events(pool_size, n_users, seed=seed, malformed_rate=0.01))
    return {
        "no-text": remix("no-text", pool, n_no_text, 0.0),
        "20%-text": remix("20%-text", pool, n_text, 0.2),
        "open-loop": remix("open-loop", pool, n_open, 0.2),
    }


# ---------------------------------------------------------------------------------------------
# Running the flow


def start_flow(flags: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [*FLOW_COMMAND, *flags], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


def log_problems(log: Path, limit: int = 10, interrupted: bool = False) -> list[str]:
    """Lines of a flow log that look like errors or warnings (the log is otherwise quiet).

    With ``interrupted``, the KeyboardInterrupt traceback that SIGINT leaves is expected and
    left out.
    """
    if not log.exists():
        return ["(no log)"]
    lines = log.read_text(errors="replace").splitlines()
    if interrupted and lines and lines[-1].strip() == "KeyboardInterrupt":
        tracebacks = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
        lines = lines[: tracebacks[-1]] if tracebacks else lines[:-1]
    pattern = re.compile(r"error|exception|traceback|panick|warn", re.IGNORECASE)
    hits = [ln for ln in lines if pattern.search(ln)]
    return hits[:limit] + ([f"... {len(hits) - limit} more"] if len(hits) > limit else [])


@dataclass
class CaseResult:
    stream: str
    io: str
    workers: int
    lines: int
    valid_events: int
    deltas: int
    dead_letters: int
    events_per_s: float | None = None
    span_s: float | None = None  # first to last delta's processed_ms
    p50_ms: float | None = None
    p99_ms: float | None = None
    wall_s: float = 0.0  # the whole process: start-up, model load, run, shutdown
    startup_s: float | None = None  # process start to the first delta
    return_code: int = 0
    ratio_vs_plain_loop: float | None = None
    log_problems: list[str] = field(default_factory=list)
    note: str = ""


def add_delta_stats(result: CaseResult, deltas: list[ProfileDelta]) -> None:
    """Fill rate, span and latency percentiles from the deltas' timestamps."""
    if not deltas:
        return
    processed = np.array([d.processed_ms for d in deltas], dtype=np.int64)
    latency = processed - np.array([d.ingest_ms for d in deltas], dtype=np.int64)
    span_s = float(processed.max() - processed.min()) / 1000
    result.events_per_s = result.valid_events / span_s if span_s > 0 else None
    result.span_s = span_s
    result.p50_ms = float(np.percentile(latency, 50))
    result.p99_ms = float(np.percentile(latency, 99))


def finish_case(
    stream: BenchStream,
    io: str,
    workers: int,
    deltas: list[ProfileDelta],
    dead: int,
    started_ms: int,
    wall_s: float,
    rc: int,
    log: Path,
) -> CaseResult:
    result = CaseResult(
        stream.name,
        io,
        workers,
        len(stream.events),
        stream.valid,
        len(deltas),
        dead,
        wall_s=wall_s,
        return_code=rc,
        log_problems=log_problems(log),
    )
    add_delta_stats(result, deltas)
    if deltas:
        result.startup_s = (min(d.processed_ms for d in deltas) - started_ms) / 1000
    checks = []
    if len(deltas) != stream.valid:
        checks.append(f"{len(deltas)} deltas for {stream.valid} valid events")
    if dead != stream.bad:
        checks.append(f"{dead} dead letters for {stream.bad} bad lines")
    if rc != 0:
        checks.append(f"exit code {rc}")
    result.note = "; ".join(checks)
    return result


def run_file_case(stream: BenchStream, workers: int, workdir: Path) -> CaseResult:
    case = workdir / f"file-{slug(stream.name)}-w{workers}"
    case.mkdir()
    source = case / "events.jsonl"
    source.write_bytes(b"".join(e.line + b"\n" for e in stream.events))
    log = case / "flow.log"
    flags = [
        "--source",
        "file",
        "--sink",
        "file",
        "--input-path",
        str(source),
        "--output-dir",
        str(case / "out"),
        "--workers",
        str(workers),
        "--metrics-port",
        str(free_port()),
    ]
    started_ms, t0 = wall_ms(), time.perf_counter()
    rc = wait_for(start_flow(flags, log), FLOW_TIMEOUT_S)
    wall_s = time.perf_counter() - t0
    deltas_path, dead_path = case / "out" / "deltas.jsonl", case / "out" / "dead_letters.jsonl"
    deltas = [delta_from_json(ln) for ln in read_lines(deltas_path)]
    dead = len(read_lines(dead_path))
    return finish_case(stream, "file", workers, deltas, dead, started_ms, wall_s, rc, log)


# ---------------------------------------------------------------------------------------------
# Kafka


@dataclass(frozen=True)
class Topics:
    events: str
    deltas: str
    dlq: str


def new_topics(broker: KafkaBroker, events: str | None = None) -> Topics:
    tag = uuid.uuid4().hex[:8]
    topics = Topics(events or f"events-{tag}", f"deltas-{tag}", f"dlq-{tag}")
    # A given events topic already exists (it is shared by the runs over one stream).
    for name in ([] if events else [topics.events]) + [topics.deltas, topics.dlq]:
        broker.create_topic(name, partitions=3)
    return topics


def read_topic(
    bootstrap: str,
    topic: str,
    want: int,
    timeout_s: float,
    idle_s: float = 10.0,
    on_poll: Callable[[int], None] | None = None,
) -> list[bytes]:
    """Message values of ``topic`` from the start, until ``want`` arrived, idle or timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_news = time.monotonic()
    try:
        while len(values) < want and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            values += [value for m in batch if (value := m.value()) is not None]
            if batch:
                last_news = time.monotonic()
            elif time.monotonic() - last_news > idle_s:
                break
            if on_poll is not None:
                on_poll(len(values))
    finally:
        consumer.close()
    return values


def kafka_flags(bootstrap: str, topics: Topics, workers: int) -> list[str]:
    return kafka_flow_args(
        bootstrap, topics.events, topics.deltas, topics.dlq, workers, free_port()
    )


def run_kafka_case(
    broker: KafkaBroker,
    stream: BenchStream,
    events_topic: str,
    workers: int,
    workdir: Path,
) -> CaseResult:
    """Closed loop: every event is already on the topic; the flow reads to the end and exits."""
    topics = new_topics(broker, events_topic)
    log = workdir / f"kafka-{slug(stream.name)}-w{workers}.log"
    flags = [*kafka_flags(broker.bootstrap, topics, workers), "--no-kafka-tail"]
    started_ms, t0 = wall_ms(), time.perf_counter()
    rc = wait_for(start_flow(flags, log), FLOW_TIMEOUT_S)
    wall_s = time.perf_counter() - t0
    # The flow has exited, so its producer has flushed: a short idle timeout is enough.
    values = read_topic(broker.bootstrap, topics.deltas, stream.valid, timeout_s=120, idle_s=10)
    dead = read_topic(broker.bootstrap, topics.dlq, stream.bad, timeout_s=60, idle_s=5)
    deltas = [delta_from_json(v) for v in values]
    result = finish_case(stream, "kafka", workers, deltas, len(dead), started_ms, wall_s, rc, log)
    # Every event was produced before the flow started, so its CreateTime-based latency is
    # mostly time spent waiting in the backlog (and for the model to load): not a latency.
    result.note = "; ".join(filter(None, [result.note, "latency = backlog wait (pre-filled)"]))
    return result


@dataclass
class OpenLoopResult:
    stream: str
    workers: int
    target_rate: float
    achieved_rate: float
    seconds: float
    sent: int
    valid_sent: int
    deltas: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    p50_last_quarter_ms: float | None  # rising vs p50 means the flow fell behind the rate
    drain_s: float | None  # end of sending to the last delta's processed_ms
    warmup_events: int
    return_code: int
    log_problems: list[str]


def run_open_loop(
    broker: KafkaBroker,
    stream: BenchStream,
    warmup: int,
    rate: float,
    workers: int,
    workdir: Path,
) -> OpenLoopResult:
    """Latency under a steady load: the flow tails the topic while events arrive at ``rate``."""
    topics = new_topics(broker)
    log = workdir / "open-loop.log"
    process = start_flow(kafka_flags(broker.bootstrap, topics, workers), log)
    head, timed = stream.events[:warmup], stream.events[warmup:]
    try:
        # Warm-up: a few events whose deltas prove the model is loaded and the partitions are
        # assigned; the timed events come after, so start-up never shows up in their latency.
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for event in head:
            send(producer, topics.events, event.user_id.encode(), event.line)
        producer.flush(30)
        want = sum(e.expected_reason is None for e in head)
        got = read_topic(broker.bootstrap, topics.deltas, want, timeout_s=180, idle_s=180)
        if len(got) < want or process.poll() is not None:
            raise RuntimeError(f"open-loop flow never warmed up: {log_problems(log)}")
        time.sleep(1.0)

        start_ms = wall_ms()
        t0 = time.perf_counter()
        for i, event in enumerate(timed):
            # Pace by the schedule, not by sleeping a fixed step, so slow sends never make the
            # producer fall behind its rate.
            lag = i / rate - (time.perf_counter() - t0)
            if lag > 0:
                time.sleep(lag)
            send(producer, topics.events, event.user_id.encode(), event.line)
        producer.flush(30)
        seconds = time.perf_counter() - t0
        end_ms = wall_ms()

        total_valid = want + sum(e.expected_reason is None for e in timed)
        values = read_topic(broker.bootstrap, topics.deltas, total_valid, timeout_s=180, idle_s=20)
    finally:
        process.send_signal(signal.SIGINT)
        rc = wait_for(process, 60)
    deltas = [d for d in map(delta_from_json, values) if d.ingest_ms >= start_ms]
    deltas.sort(key=lambda d: d.ingest_ms)
    latency = np.array([d.processed_ms - d.ingest_ms for d in deltas], dtype=np.int64)
    quarter = latency[len(latency) * 3 // 4 :]
    return OpenLoopResult(
        stream=stream.name,
        workers=workers,
        target_rate=rate,
        achieved_rate=len(timed) / seconds,
        seconds=seconds,
        sent=len(timed),
        valid_sent=total_valid - want,
        deltas=len(deltas),
        p50_ms=float(np.percentile(latency, 50)) if len(latency) else None,
        p99_ms=float(np.percentile(latency, 99)) if len(latency) else None,
        max_ms=float(latency.max()) if len(latency) else None,
        p50_last_quarter_ms=float(np.percentile(quarter, 50)) if len(quarter) else None,
        drain_s=(max(d.processed_ms for d in deltas) - end_ms) / 1000 if deltas else None,
        warmup_events=len(head),
        return_code=rc,
        log_problems=log_problems(log, interrupted=True),
    )


# ---------------------------------------------------------------------------------------------
# The plain loop baseline


@dataclass
class PlainLoopResult:
    stream: str
    events: int  # lines processed (a prefix when the time budget ran out)
    valid_events: int
    model_calls: int  # Embedder.encode calls (cache hits included)
    seconds: float
    events_per_s: float
    budget_hit: bool


def plain_loop(stream: BenchStream, model: Embedder, budget_s: float, out: Path) -> PlainLoopResult:
    """Parse, embed, update a dict of states, one event at a time: the loop a user would write.

    It calls the same ``Embedder`` (with its cache, as the flow has) once per event that has an
    embedding text, reads keywords and sentiment with the same default model, and writes the
    same JSON deltas to a file, so it does the flow's work; what
    it lacks is the micro-batching across users and Bytewax's runtime (and with them recovery,
    workers and metrics). Stops at the end of the stream or after ``budget_s`` (the rate of a
    long prefix is the rate of the whole).
    """
    params = profile_params(Config(), model.name)
    sentiment = load_sentiment_model()
    states: dict[str, UserState] = {}
    valid = calls = processed = 0
    started = time.perf_counter()
    sink = out.open("wb")
    for generated in stream.events:
        now = wall_ms()
        parsed = parse_event(generated.line, ingest_ms=now)
        processed += 1
        if isinstance(parsed, Event):
            valid += 1
            text = embedding_text(parsed)
            vector = model.encode([text])[0] if text is not None else None
            calls += text is not None
            signals = read_text(parsed, sentiment)
            state, outputs = apply_event(
                states.get(parsed.user_id), parsed, vector, params, now, model.dim, signals=signals
            )
            for output in outputs:
                if isinstance(output, ProfileDelta):
                    sink.write(delta_to_json(output) + b"\n")
            if state is None:
                states.pop(parsed.user_id, None)
            else:
                states[parsed.user_id] = state
        if time.perf_counter() - started > budget_s:
            break
    sink.close()
    seconds = time.perf_counter() - started
    return PlainLoopResult(
        stream.name,
        processed,
        valid,
        calls,
        seconds,
        valid / seconds,
        processed < len(stream.events),
    )


# ---------------------------------------------------------------------------------------------
# Helpers and the report


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def read_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()] if path.exists() else []


def print_table(cases: list[CaseResult], open_loop: OpenLoopResult | None) -> None:
    header = (
        f"{'stream':<9} {'io':<6} {'workers':>7} {'events':>7} {'events/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'wall s':>7} {'ratio':>6}"
    )
    print_header(header)
    for c in cases:
        flag = "*" if c.io == "kafka" else " "
        print(
            f"{c.stream:<9} {c.io:<6} {c.workers:>7} {c.valid_events:>7} "
            f"{fmt(c.events_per_s):>9} {fmt(c.p50_ms):>7}{flag} {fmt(c.p99_ms):>7}{flag} "
            f"{c.wall_s:>7.1f} {fmt(c.ratio_vs_plain_loop, 1):>6}"
        )
    if open_loop is not None:
        o = open_loop
        label = f"{o.stream:<9} {'kafka':<6} {o.workers:>7} {o.valid_sent:>7}"
        print(
            f"{label} {fmt(o.achieved_rate):>9} {fmt(o.p50_ms):>8} {fmt(o.p99_ms):>8} "
            f"{o.seconds:>7.1f} {'':>6}  <- open loop, {o.target_rate:g} events/s offered"
        )


def print_notes(
    cases: list[CaseResult], open_loop: OpenLoopResult | None, plain: list[PlainLoopResult]
) -> None:
    print("\nevents = valid events (each makes one delta); events/s = events / (last - first")
    print("delta processed_ms), i.e. without process start-up and model load; wall s = the whole")
    print("process. ratio = events/s / plain-loop events/s on the same stream (first row below).")
    print("* closed-loop Kafka: every event was produced before the flow started, so latency")
    print("  (processed_ms - Kafka CreateTime) is backlog wait, not latency; see the open loop.")
    if open_loop is not None:
        o = open_loop
        print(
            f"open loop: {o.sent} events at {o.achieved_rate:,.0f}/s over {o.seconds:.1f} s "
            f"after {o.warmup_events} warm-up events; {o.deltas}/{o.valid_sent} deltas; "
            f"p50 of last quarter {fmt(o.p50_last_quarter_ms)} ms, max {fmt(o.max_ms)} ms, "
            f"drain {fmt(o.drain_s, 1)} s, exit code {o.return_code} after SIGINT"
        )
    print(
        "\nplain loop (in-process, after model load, same Embedder and cache, one text per call):"
    )
    for p in plain:
        budget = " (time budget hit: prefix)" if p.budget_hit else ""
        print(
            f"  {p.stream:<9} {p.events_per_s:>8,.0f} events/s "
            f"({p.valid_events} events, {p.model_calls} encode calls, {p.seconds:.1f} s{budget})"
        )
    short = [f"{c.stream} {c.io} w{c.workers}" for c in cases if (c.span_s or 0) < 2.0]
    if short:
        print(f"\nWARNING: under 2 s of deltas (rate is noisy): {', '.join(short)}; raise --events")
    problems = [(f"{c.stream} {c.io} w{c.workers}", c.note, c.log_problems) for c in cases]
    if open_loop is not None:
        problems.append(("open loop", "", open_loop.log_problems))
    for name, note, lines in problems:
        if (note and note != "latency = backlog wait (pre-filled)") or lines:
            print(f"\n{name}: {note}")
            for line in lines:
                print(f"    log: {line[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # 20k events pass in about a second on 2 CPUs, too short a window for a steady rate; 60k
    # keep every case's delta window at several seconds.
    parser.add_argument(
        "--events",
        type=int,
        default=60_000,
        help="no-text events; 20%%-text uses half (default 60000)",
    )
    parser.add_argument("--quick", action="store_true", help="divide every event count by 5")
    parser.add_argument("--users", type=int, default=2_000, help="generated user population")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop events/s")
    parser.add_argument("--open-seconds", type=float, default=20.0, help="open-loop duration")
    parser.add_argument(
        "--plain-budget-s", type=float, default=20.0, help="longest the plain loop runs per stream"
    )
    parser.add_argument("--no-kafka", action="store_true", help="file cases only (no JDK)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    scale = 5 if args.quick else 1
    n_no_text, n_text = args.events // scale, args.events // 2 // scale
    open_seconds, plain_budget = args.open_seconds / scale, args.plain_budget_s / scale
    n_open = round(args.rate * open_seconds)
    warmup = 100
    begun = time.perf_counter()
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        print(
            f"WARNING: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs: other work "
            "will slow every case down and make the numbers noisy",
            file=sys.stderr,
        )

    streams = build_streams(n_no_text, n_text, n_open + warmup, args.users, args.seed)
    print(
        f"streams: no-text {len(streams['no-text'].events)} lines "
        f"({streams['no-text'].text_share():.1%} text), 20%-text "
        f"{len(streams['20%-text'].events)} lines ({streams['20%-text'].text_share():.1%} text)"
    )

    # The plain loop first, in this process, with the model loaded (and warmed) once.
    model = Embedder(cache_size=Config().embed_cache_size)
    model.encode(["warm up the model", "and its kernels"])
    workdir = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    plain = [
        plain_loop(streams[name], model, plain_budget, workdir / f"plain-{slug(name)}.jsonl")
        for name in ("no-text", "20%-text")
    ]
    baseline = {p.stream: p.events_per_s for p in plain}
    del model

    cases: list[CaseResult] = []
    open_loop: OpenLoopResult | None = None
    broker: KafkaBroker | None = None
    try:
        for name in ("no-text", "20%-text"):
            for workers in (1, 2):
                cases.append(run_file_case(streams[name], workers, workdir))
                print(f"  done: {name} file w{workers}", file=sys.stderr)
        if not args.no_kafka:
            (workdir / "kafka").mkdir()
            broker = KafkaBroker(workdir / "kafka")
            broker.start()
            for name in ("no-text", "20%-text"):
                # One events topic per stream, produced once: without recovery the flow reads
                # every partition from the beginning, so both worker counts reuse it.
                events_topic = new_topics(broker).events
                produce_all(
                    broker.bootstrap,
                    events_topic,
                    ((e.user_id.encode(), e.line) for e in streams[name].events),
                )
                for workers in (1, 2):
                    cases.append(
                        run_kafka_case(broker, streams[name], events_topic, workers, workdir)
                    )
                    print(f"  done: {name} kafka w{workers}", file=sys.stderr)
            open_loop = run_open_loop(broker, streams["open-loop"], warmup, args.rate, 2, workdir)
    finally:
        if broker is not None:
            broker.stop()
    for case in cases:
        if case.events_per_s is not None and baseline.get(case.stream):
            case.ratio_vs_plain_loop = case.events_per_s / baseline[case.stream]
    total_s = time.perf_counter() - begun

    print()
    print_table(cases, open_loop)
    print_notes(cases, open_loop, plain)
    print(
        f"\ntotal benchmark time {total_s:.0f} s; "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )

    import torch  # loaded by the plain loop's Embedder already: for its threads

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(
            load_before[0],
            torch_threads=torch.get_num_threads(),
            confluent_kafka=package_version("confluent-kafka"),
        ),
        "settings": {
            "events_no_text": n_no_text,
            "events_20pct_text": n_text,
            "users": args.users,
            "seed": args.seed,
            "quick": args.quick,
            "open_loop_rate": args.rate,
            "open_loop_seconds": open_seconds,
            "plain_loop_budget_s": plain_budget,
            "launcher": " ".join(FLOW_COMMAND[1:]),
        },
        "method": {
            "events_per_s": "valid events / (last - first delta processed_ms): excludes "
            "process start-up and model load",
            "latency_ms": "processed_ms - ingest_ms per delta (file read time, or Kafka "
            "CreateTime); closed-loop Kafka latency is backlog wait",
            "ratio_vs_plain_loop": "flow events/s / plain loop events/s (embedding every "
            "embedding text one call at a time, same Embedder with its cache) on the same stream",
        },
        "cases": [asdict(c) for c in cases],
        "open_loop": asdict(open_loop) if open_loop is not None else None,
        "plain_loop": [asdict(p) for p in plain],
        "total_seconds": total_s,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")
    failed = [c for c in cases if c.return_code != 0]
    if failed or (open_loop is not None and open_loop.deltas == 0):
        print(f"flow logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
