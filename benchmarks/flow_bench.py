"""Throughput, delta size and latency of the profilestream dataflow, against what Bytewax allows.

What: every case runs as its own process, as deployed, over generated streams -- ``no-text``
(search and review events removed) and ``20%-text`` (re-mixed so that 20% of the lines are
searches or reviews) -- file to file and Kafka to Kafka, one worker:

* ``trivial item`` / ``trivial batch``: the trivial keyed Bytewax flow on the same events
  (parse, key by user, count, write a line per event; :mod:`benchmarks.trivial_flow`), per
  item and with batched steps: the speed of light of a keyed Bytewax job here;
* ``quix count``: Quix Streams 3.28.1 counting each user's events in RocksDB state, JSON out
  (:mod:`benchmarks.quix_count`, in its own virtualenv under the cache folder): the peer a
  user would otherwise pick, Kafka to Kafka;
* ``profilestream``: ``python -m dataflow run`` at its defaults (windows, coalescing), with
  the generator's catalog embedded beforehand (``profilestream embed-items``, outside the
  timing) and served through ``--item-vectors-dir``, as a deployment runs it: item events
  look their vector up, only queries and reviews need the model;
* open loops on Kafka: the flow tails the topic while a producer sends each stream at half
  the rate its closed loop reached -- the only honest latency measurement (a
  pre-filled topic measures how long events sat in the backlog);
* the embedder's ceiling for the 20%-text stream: the same model, in this process, embedding
  exactly the distinct texts the flow must embed, in batches of 64 -- events/s if the model
  were the only cost. The flow loads its model lazily, on the first text, so that load (a
  few seconds) falls inside the 20%-text runs.

Why: to know how close the profile flow runs to Bytewax's own limit and to the model's, and
what its deltas cost downstream.

How the numbers are made:

* events/s = events covered by the outputs / (last output - first output), wall clock; it
  leaves out process start-up, which is reported apart (process start to the first output);
* ratio = events/s / the trivial per-item flow's events/s, same I/O, same run; ``quix_ratio``
  likewise over Quix Streams' count, Kafka to Kafka;
* bytes/event = bytes of delta values / events; deltas/event likewise;
* latency = ``processed_ms - ingest_ms`` of each delta (its earliest event's file read time or
  Kafka CreateTime), p50 and p99;
* results, with machine information, go to ``benchmarks/results/<date>-flow_bench.json``.

    python benchmarks/flow_bench.py            # 240k no-text / 120k 20%-text events, ~10 min
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Runnable as `python benchmarks/flow_bench.py`: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from confluent_kafka import Consumer, Producer

from benchmarks.common import dated_result, fmt, machine_info, package_version, print_header
from dataflow.config import Config
from dataflow.factories import profile_params
from dataflow.sim import (
    DEFAULT_CATALOG_ITEMS,
    GeneratedEvent,
    build_catalog,
    generate_events,
)
from operators.ingest import Event, parse_event
from operators.profile import delta_from_json
from operators.recsys import CatalogEntry, ItemVectors, embed_catalog, save_item_vectors
from operators.text.embedding import Embedder, embedding_text, typed_text
from tests.support.kafka_broker import KafkaBroker, cache_dir, free_port, kafka_flow_args, send

ROOT = Path(__file__).resolve().parents[1]
TEXT_TYPES = frozenset({"search", "review"})
RESULTS = dated_result("flow_bench")
TIMEOUT_S = 900.0
PROFILE_FLOW = [sys.executable, "-m", "dataflow", "run"]
TRIVIAL_FLOW = [sys.executable, str(ROOT / "benchmarks" / "trivial_flow.py")]
#: The peer's pins: Quix Streams needs a confluent-kafka older than ours, so it gets its own
#: virtualenv under the cache folder (made once, reused).
QUIX_PINS = ("quixstreams==3.28.1", "confluent-kafka<2.13")


def quix_python() -> Path:
    """The Python of the Quix Streams virtualenv, made on first use."""
    venv = cache_dir() / "peers" / "quix-3.28.1"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *QUIX_PINS], check=True)
    return python


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True)
class BenchStream:
    """A list of generated lines under a name."""

    name: str
    events: list[GeneratedEvent]

    @property
    def valid(self) -> int:
        return sum(e.expected_reason is None for e in self.events)

    def text_share(self) -> float:
        return sum(_is_text(e) for e in self.events) / max(len(self.events), 1)

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(e.line + b"\n" for e in self.events))
        return path


def _is_text(event: GeneratedEvent) -> bool:
    try:
        data = json.loads(event.line)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") in TEXT_TYPES


def remix(name: str, pool: Sequence[GeneratedEvent], n: int, text_share: float) -> BenchStream:
    """The first ``n`` lines of ``pool`` with exactly ``text_share`` of them text events.

    Takes the first text lines and the first other lines and merges them in pool order, so
    every user's events stay in event-time order and a re-sent duplicate never precedes its
    original.
    """
    n_text = round(n * text_share)
    texts = [i for i, e in enumerate(pool) if _is_text(e)][:n_text]
    others = [i for i, e in enumerate(pool) if not _is_text(e)][: n - n_text]
    if len(texts) < n_text or len(others) < n - n_text:
        raise ValueError(f"pool of {len(pool)} lines is too small for {n} lines of {name}")
    return BenchStream(name, [pool[i] for i in sorted(texts + others)])


def served_catalog(model: Embedder, seed: int, folder: Path) -> ItemVectors:
    """The generator's catalog for ``seed``, embedded once as ``profilestream embed-items``
    does and saved to ``folder`` for ``--item-vectors-dir``."""
    catalog = build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))
    entries = [CatalogEntry(c.item_id, c.title, c.category, c.brand) for c in catalog]
    items = embed_catalog(entries, model, batch_size=model.batch_size)
    save_item_vectors(items, folder)
    return items


def build_streams(n_no_text: int, n_text: int, n_users: int, seed: int) -> list[BenchStream]:
    # The generator makes ~19% text lines; size the pool so both kinds have room to spare.
    pool_size = math.ceil(max(0.2 * n_text / 0.15, max(n_no_text, 0.8 * n_text) / 0.75))
    pool = list(generate_events(pool_size, n_users, seed=seed, malformed_rate=0.01))
    return [remix("no-text", pool, n_no_text, 0.0), remix("20%-text", pool, n_text, 0.2)]


# ---------------------------------------------------------------------------------------------
# Running a case


@dataclass
class CaseResult:
    flow: str  # "trivial item", "trivial batch", "quix count" or "profilestream"
    stream: str
    io: str
    lines: int
    events: int = 0  # events covered by the outputs
    outputs: int = 0
    events_per_s: float | None = None
    span_s: float | None = None
    startup_s: float | None = None  # process start to the first output
    wall_s: float = 0.0
    bytes_per_event: float | None = None
    deltas_per_event: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None  # events/s over the trivial per-item flow's, same I/O
    quix_ratio: float | None = None  # events/s over Quix Streams' bare count's (Kafka)
    return_code: int = 0
    log_problems: list[str] = field(default_factory=list)


def run_process(command: list[str], log: Path) -> tuple[int, int, float]:
    """Run a flow to completion; returns (exit code, start wall ms, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    started_ms, t0 = wall_ms(), time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        rc = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        rc = -9
    return rc, started_ms, time.perf_counter() - t0


def measure_trivial(result: CaseResult, values: list[bytes], started_ms: int) -> CaseResult:
    """Fill a counting flow's rate from its outputs: lines ``user count ms`` (Bytewax) or
    JSON ``{"count": n, "ms": ms}`` (Quix)."""
    stamps = np.array(
        [json.loads(v)["ms"] if v[:1] == b"{" else int(v.rsplit(b" ", 1)[1]) for v in values],
        dtype=np.int64,
    )
    result.outputs = result.events = len(values)
    if len(stamps):
        result.span_s = float(stamps.max() - stamps.min()) / 1000
        result.events_per_s = len(stamps) / result.span_s if result.span_s else None
        result.startup_s = (int(stamps.min()) - started_ms) / 1000
    return result


def measure_deltas(result: CaseResult, values: list[bytes], started_ms: int) -> CaseResult:
    """Fill the profile flow's rate, delta size and latency from its delta values."""
    deltas = [delta_from_json(v) for v in values]
    result.outputs = len(deltas)
    result.events = sum(len(d.event_ids) for d in deltas)
    if not deltas:
        return result
    processed = np.array([d.processed_ms for d in deltas], dtype=np.int64)
    # Deltas the event clock alone made (a segment lapsing) cover no event: no latency.
    waited = np.array([d.processed_ms - d.ingest_ms for d in deltas if d.ingest_ms], np.int64)
    result.span_s = float(processed.max() - processed.min()) / 1000
    result.events_per_s = result.events / result.span_s if result.span_s else None
    result.startup_s = (int(processed.min()) - started_ms) / 1000
    result.bytes_per_event = sum(map(len, values)) / result.events
    result.deltas_per_event = len(deltas) / result.events
    result.p50_ms, result.p99_ms = (float(x) for x in np.percentile(waited, [50, 99]))
    return result


def file_case(
    flow: str, stream: BenchStream, source: Path, workdir: Path, flow_args: Sequence[str] = ()
) -> CaseResult:
    case = workdir / slug(f"{flow}-{stream.name}")
    case.mkdir()
    result = CaseResult(flow, stream.name, "file", len(stream.events))
    if flow == "profilestream":
        command = [*PROFILE_FLOW, *flow_args, "--input-path", str(source)]
        command += ["--output-dir", str(case)]
        command += ["--metrics-port", str(free_port())]
        output = case / "deltas.jsonl"
    else:
        output = case / "out.txt"
        command = [*TRIVIAL_FLOW, "--mode", flow.split()[1], "--input", str(source)]
        command += ["--output", str(output)]
    result.return_code, started_ms, result.wall_s = run_process(command, case / "flow.log")
    result.log_problems = log_problems(case / "flow.log")
    values = read_lines(output)
    if flow == "profilestream":
        return measure_deltas(result, values, started_ms)
    return measure_trivial(result, values, started_ms)


def kafka_case(
    flow: str,
    stream: BenchStream,
    broker: KafkaBroker,
    events_topic: str,
    workdir: Path,
    flow_args: Sequence[str] = (),
) -> CaseResult:
    """Closed loop: every event is on the topic already; the flow reads to the end and exits."""
    tag = uuid.uuid4().hex[:8]
    out_topic, dlq = f"out-{tag}", f"dlq-{tag}"
    for topic in (out_topic, dlq):
        broker.create_topic(topic, partitions=3)
    result = CaseResult(flow, stream.name, "kafka", len(stream.events))
    log = workdir / f"{slug(flow + stream.name)}-kafka.log"
    if flow == "profilestream":
        command = [*PROFILE_FLOW, *flow_args, "--no-kafka-tail"]
        command += kafka_flow_args(broker.bootstrap, events_topic, out_topic, dlq, 1, free_port())
    elif flow == "quix count":
        command = [str(quix_python()), str(ROOT / "benchmarks" / "quix_count.py")]
        command += ["--brokers", broker.bootstrap, "--topic", events_topic]
        command += ["--out-topic", out_topic, "--count", str(len(stream.events))]
        command += ["--state-dir", str(workdir / f"quix-state-{tag}")]
    else:
        command = [*TRIVIAL_FLOW, "--mode", flow.split()[1], "--brokers", broker.bootstrap]
        command += ["--topic", events_topic, "--out-topic", out_topic]
    result.return_code, started_ms, result.wall_s = run_process(command, log)
    result.log_problems = log_problems(log)
    # The flow has exited, so its producer has flushed: a short idle timeout is enough.
    want = stream.valid if flow == "profilestream" else len(stream.events)
    values = read_topic(broker.bootstrap, out_topic, want, timeout_s=180, idle_s=10)
    if flow == "profilestream":
        return measure_deltas(result, values, started_ms)
    return measure_trivial(result, values, started_ms)


@dataclass
class OpenLoopResult:
    stream: str
    target_rate: float
    achieved_rate: float
    seconds: float
    sent: int
    deltas: int
    events_covered: int
    deltas_per_event: float | None
    bytes_per_event: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    emit_interval_ms: int
    return_code: int
    log_problems: list[str]


def open_loop(
    broker: KafkaBroker,
    stream: BenchStream,
    rate: float,
    seconds: float,
    workdir: Path,
    flow_args: Sequence[str] = (),
    warm_seconds: float = 10.0,
) -> OpenLoopResult:
    """Latency under a steady load: the flow tails the topic while events arrive at ``rate``.

    The first ``warm_seconds`` of the paced stream are not measured: the flow meets its
    first users and item texts there, as a freshly started flow does, and catches up.
    """
    tag = uuid.uuid4().hex[:8]
    events_topic, deltas_topic, dlq = f"events-{tag}", f"deltas-{tag}", f"dlq-{tag}"
    for topic in (events_topic, deltas_topic, dlq):
        broker.create_topic(topic, partitions=3)
    log = workdir / f"open-loop-{slug(stream.name)}.log"
    command = [*PROFILE_FLOW, *flow_args]
    command += kafka_flow_args(broker.bootstrap, events_topic, deltas_topic, dlq, 1, free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    total = round(rate * (warm_seconds + seconds))
    paced = [stream.events[i % len(stream.events)] for i in range(total)]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "log_level": 0})
    # One event first: its delta proves the partitions assigned and, a text event where the
    # stream has text, the model loaded (it loads on the first text; until 2026-12-06 this
    # sent the stream's first event, so the model loaded inside the measured window).
    first = next((e for e in paced if _is_text(e) and e.expected_reason is None), paced[0])
    try:
        send(producer, events_topic, first.user_id.encode(), first.line)
        producer.flush(30)
        if not read_topic(broker.bootstrap, deltas_topic, 1, timeout_s=180, idle_s=180):
            raise RuntimeError(f"open-loop flow never started: {log_problems(log)}")
        t0 = time.perf_counter()
        measured_from = wall_ms() + round(warm_seconds * 1000)
        for i, event in enumerate(paced[1:]):
            # Pace by the schedule, not by sleeping a fixed step, so slow sends never make the
            # producer fall behind its rate.
            lag = i / rate - (time.perf_counter() - t0)
            if lag > 0:
                time.sleep(lag)
            send(producer, events_topic, event.user_id.encode(), event.line)
        producer.flush(30)
        elapsed = time.perf_counter() - t0
        time.sleep(5.0)  # the last deltas go out within the emit interval
        values = read_topic(broker.bootstrap, deltas_topic, 10**9, timeout_s=120, idle_s=8)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rc = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            rc = -9
    timed = [(v, d) for v in values if (d := delta_from_json(v)).ingest_ms >= measured_from]
    latency = np.array([d.processed_ms - d.ingest_ms for _, d in timed], dtype=np.int64)
    covered = sum(len(d.event_ids) for _, d in timed)
    return OpenLoopResult(
        stream=stream.name,
        target_rate=rate,
        achieved_rate=(len(paced) - 1) / elapsed,
        seconds=seconds,
        sent=len(paced),
        deltas=len(timed),
        events_covered=covered,
        deltas_per_event=len(timed) / covered if covered else None,
        bytes_per_event=sum(len(v) for v, _ in timed) / covered if covered else None,
        p50_ms=float(np.percentile(latency, 50)) if len(latency) else None,
        p99_ms=float(np.percentile(latency, 99)) if len(latency) else None,
        max_ms=float(latency.max()) if len(latency) else None,
        emit_interval_ms=Config().emit_interval_ms,
        return_code=rc,
        log_problems=log_problems(log, interrupted=True),
    )


@dataclass
class EmbedderCeiling:
    stream: str
    events: int
    distinct_texts: int
    seconds: float
    events_per_s: float


def embedder_ceiling(stream: BenchStream, model: Embedder, items: ItemVectors) -> EmbedderCeiling:
    """Events/s if embedding the stream's distinct texts, 64 at a time, were the only cost:
    queries, reviews and the category and brand of items the catalog lacks."""
    config = Config()
    params = profile_params(config, model.name)
    events = [e for e in (parse_event(g.line) for g in stream.events) if isinstance(e, Event)]
    texts = list(
        dict.fromkeys(
            t
            for e in events
            if params.moves_interest(e)
            and (typed_text(e) is not None or items.get(e.item_id) is None)
            and (t := embedding_text(e, model.prompts))
        )
    )
    model.encode(["warm up the model", "and its kernels"])
    t0 = time.perf_counter()
    for start in range(0, len(texts), config.embed_batch_size):
        model.encode(texts[start : start + config.embed_batch_size])
    seconds = time.perf_counter() - t0
    return EmbedderCeiling(stream.name, len(events), len(texts), seconds, len(events) / seconds)


# ---------------------------------------------------------------------------------------------
# Helpers and the report


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def read_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()] if path.exists() else []


def read_topic(
    bootstrap: str, topic: str, want: int, timeout_s: float, idle_s: float = 10.0
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
    finally:
        consumer.close()
    return values


def log_problems(log: Path, limit: int = 10, interrupted: bool = False) -> list[str]:
    """Lines of a flow log that look like errors or warnings (the log is otherwise quiet).

    With ``interrupted``, the KeyboardInterrupt traceback that SIGINT leaves is left out.
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


def add_ratios(cases: list[CaseResult]) -> None:
    for case in cases:
        trivial = next((c for c in cases if c.flow == "trivial item" and c.io == case.io), None)
        if trivial and trivial.events_per_s and case.events_per_s:
            case.ratio = case.events_per_s / trivial.events_per_s
        quix = next((c for c in cases if c.flow == "quix count" and c.io == case.io), None)
        if quix and quix.events_per_s and case.events_per_s:
            case.quix_ratio = case.events_per_s / quix.events_per_s


def print_report(
    cases: list[CaseResult], ceiling: EmbedderCeiling | None, loops: list[OpenLoopResult]
) -> None:
    header = (
        f"{'flow':<14} {'stream':<9} {'io':<6} {'events':>8} {'events/s':>9} {'ratio':>6} "
        f"{'/quix':>6} {'start s':>7} {'deltas/ev':>9} {'B/event':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    print_header(header)
    for c in cases:
        print(
            f"{c.flow:<14} {c.stream:<9} {c.io:<6} {c.events:>8,} {fmt(c.events_per_s):>9} "
            f"{fmt(c.ratio, 2):>6} {fmt(c.quix_ratio, 2):>6} {fmt(c.startup_s, 1):>7} "
            f"{fmt(c.deltas_per_event, 3):>9} "
            f"{fmt(c.bytes_per_event):>8} {fmt(c.p50_ms):>7} {fmt(c.p99_ms):>7}"
        )
    for loop in loops:
        print(
            f"{'profilestream':<14} {loop.stream:<9} {'kafka':<6} {loop.events_covered:>8,} "
            f"{fmt(loop.achieved_rate):>9} {'':>6} {'':>6} {'':>7} "
            f"{fmt(loop.deltas_per_event, 3):>9} "
            f"{fmt(loop.bytes_per_event):>8} {fmt(loop.p50_ms):>7} {fmt(loop.p99_ms):>7}"
            f"  <- open loop, {loop.target_rate:,.0f} events/s offered"
        )
    print("\nratio = events/s over the trivial per-item flow's, same I/O; /quix = over Quix")
    print("Streams' bare count per user (Kafka, same broker, same run). Closed-loop latency is")
    print("time in the backlog (every event was there before the flow started); see the open loop.")
    if ceiling is not None:
        rates = [c.events_per_s for c in cases if c.stream == ceiling.stream and c.events_per_s]
        share = f"; the flow reached {max(rates) / ceiling.events_per_s:.0%} of it" if rates else ""
        print(
            f"embedder ceiling, {ceiling.stream}: {ceiling.distinct_texts:,} distinct texts to "
            f"embed in {ceiling.seconds:.1f} s = {ceiling.events_per_s:,.0f} events/s{share}"
        )
    for loop in loops:
        print(
            f"open loop, {loop.stream}: {loop.sent:,} events at {loop.achieved_rate:,.0f}/s, "
            f"the last {loop.seconds:.0f} s measured; {loop.deltas:,} deltas; "
            f"max {fmt(loop.max_ms)} ms; "
            f"target p99 <= emit interval + 200 = {loop.emit_interval_ms + 200} ms"
        )
    for c in cases:
        if c.return_code or c.log_problems:
            print(f"\n{c.flow} {c.stream} {c.io}: exit {c.return_code}")
            for line in c.log_problems:
                print(f"    log: {line[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=240_000, help="no-text events (text: half)")
    parser.add_argument("--quick", action="store_true", help="divide every event count by 5")
    parser.add_argument("--users", type=int, default=20_000, help="generated user population")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--open-seconds", type=float, default=30.0, help="open-loop duration")
    parser.add_argument("--no-kafka", action="store_true", help="file cases only (no JDK)")
    parser.add_argument(
        "--no-open-loop", dest="open_loop", action="store_false", help="closed loops only"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    scale = 5 if args.quick else 1
    begun = time.perf_counter()
    load_before = os.getloadavg()[0]
    if load_before > (os.cpu_count() or 1):
        print(f"WARNING: load average {load_before:.1f}: numbers will be noisy", file=sys.stderr)
    streams = build_streams(args.events // scale, args.events // 2 // scale, args.users, args.seed)
    for s in streams:
        print(f"stream {s.name}: {len(s.events):,} lines, {s.text_share():.1%} text", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    files = {s.name: s.write(workdir / f"{slug(s.name)}.jsonl") for s in streams}
    no_text, text = streams
    model = Embedder(cache_size=0, batch_size=Config().embed_batch_size)
    items = served_catalog(model, args.seed, workdir / "item-vectors")
    flow_args = ["--item-vectors-dir", str(workdir / "item-vectors")]

    cases = [file_case(f, no_text, files[no_text.name], workdir, flow_args) for f in FLOWS]
    cases.append(file_case("profilestream", text, files[text.name], workdir, flow_args))
    ceiling = embedder_ceiling(text, model, items)
    loops: list[OpenLoopResult] = []
    if not args.no_kafka:
        (workdir / "kafka").mkdir()
        broker = KafkaBroker(workdir / "kafka")
        broker.start()
        try:
            topics = {}
            for stream in streams:
                topics[stream.name] = f"events-{uuid.uuid4().hex[:8]}"
                broker.create_topic(topics[stream.name], partitions=3)
                producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
                for e in stream.events:
                    send(producer, topics[stream.name], e.user_id.encode(), e.line)
                producer.flush(60)
            for peer in ("trivial item", "quix count"):
                cases.append(kafka_case(peer, no_text, broker, topics["no-text"], workdir))
            for stream in streams:
                cases.append(
                    kafka_case(
                        "profilestream", stream, broker, topics[stream.name], workdir, flow_args
                    )
                )
            closed_loops = cases[-2:] if args.open_loop else []
            for stream, closed in zip(streams, closed_loops, strict=False):
                rate = (closed.events_per_s or 2_000.0) / 2  # half the closed loop's maximum
                seconds = args.open_seconds / scale
                loops.append(open_loop(broker, stream, rate, seconds, workdir, flow_args))
        finally:
            broker.stop()
    add_ratios(cases)
    total_s = time.perf_counter() - begun

    print()
    print_report(cases, ceiling, loops)
    print(f"\ntotal {total_s:.0f} s; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")  # fmt: skip

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(load_before, confluent_kafka=package_version("confluent-kafka")),
        "settings": {
            "events_no_text": len(no_text.events),
            "events_20pct_text": len(text.events),
            "users": args.users,
            "seed": args.seed,
            "quick": args.quick,
            "open_loop_seconds": args.open_seconds,
        },
        "cases": [asdict(c) for c in cases],
        "embedder_ceiling": asdict(ceiling),
        "open_loops": [asdict(loop) for loop in loops],
        "total_seconds": total_s,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")
    if any(c.return_code for c in cases):
        print(f"flow logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


FLOWS = ("trivial item", "trivial batch", "profilestream")

if __name__ == "__main__":
    sys.exit(main())
