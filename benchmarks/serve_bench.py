"""How fast ``profilestream serve`` answers, and how fresh what it answers is.

    python benchmarks/serve_bench.py                   # 100k users, SQLite and Redis, Kafka
    python benchmarks/serve_bench.py --users 20000 --seconds 10 --no-kafka   # quicker

1. **Latency**: 100,000 profiles (cloned from the real flow's profiles of generated users,
   with a 384-d float16 interest vector: ~3 KB each) are written into a SQLite store and
   into a real ``redis-server``; ``serve`` runs as its own process over each (consumer off,
   so only serving is measured) and **vegeta** (``go install``-ed if missing) fetches random
   users' profiles at a fixed 1,000 requests/s, then at rising fixed rates until p99 passes
   5 ms or requests fail, then closed-loop as fast as it can (the maximum rate). vegeta
   runs on the same 2 cores as the server (and Redis): its CPU is part of the picture.
2. **Freshness and latency under ingest** (needs a JDK for the Kafka broker; skipped with
   ``--no-kafka``): ``serve`` consumes a deltas topic fed at a steady 1,000 full deltas/s
   while vegeta reads at 1,000 requests/s; every 100 ms a probe delta for a probe user is
   produced and the API is polled every 10 ms until it serves that version (polling faster
   only adds load to the 2 cores the service shares with the broker and the load). The
   delay is from handing the delta to the producer to the API serving it; the service's own
   histogram (``profilestream_serve_delta_delay_seconds``, emitted -> applied, every delta)
   gives the share of all deltas in the store within 1 s.

Prints tables and writes ``benchmarks/results/<date>-serve_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

# Runnable as `python benchmarks/serve_bench.py`: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, dated_result, fmt, machine_info, package_version, print_header
from dataflow.serve.auth import Scope, new_key, write_keys
from dataflow.serve.store import Batch, ProfileStore, open_store
from operators.profile import ProfileDelta, delta_to_json, encode_vector, materialize

RESULTS = dated_result("serve_bench")
VEGETA = "github.com/tsenart/vegeta/v12@v12.13.0"
TARGET_P99_MS = 5.0


def vegeta_binary() -> str:
    """vegeta on PATH or in ``go env GOPATH``/bin, installed with ``go install`` if missing."""
    found = shutil.which("vegeta")
    gopath = Path(os.environ.get("GOPATH") or Path.home() / "go") / "bin" / "vegeta"
    if found or gopath.exists():
        return found or str(gopath)
    if shutil.which("go") is None:
        raise SystemExit("vegeta is missing and there is no Go toolchain to `go install` it")
    print(f"installing {VEGETA} ...", flush=True)
    subprocess.run(["go", "install", VEGETA], check=True)
    return str(gopath)


def template_profiles(n_users: int = 400, n_events: int = 12_000) -> list[ProfileDelta]:
    """Full deltas of real profiles: generated events through the real flow (a stand-in
    encoder: the text model is not what is measured), each with a 384-d interest vector."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from dataflow.config import Config
    from dataflow.flow import build_flow
    from dataflow.sim import generate_events
    from tests.support.fakes import HashEncoder, WordListSentiment

    events = generate_events(n_events, n_users, seed=5, malformed_rate=0.0)
    lines = [(g.line.decode(), f"bench:{i}") for i, g in enumerate(events)]
    deltas: list[tuple[str, str]] = []
    config = Config(emit_interval_ms=0, embed_max_wait_ms=1)
    flow = build_flow(
        config,
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=TestingSource(lines, batch_size=100),
        sinks={"deltas": TestingSink(deltas)},
    )
    run_main(flow)
    rng = np.random.default_rng(0)
    out = []
    for user, profile in materialize(v for _, v in deltas).items():
        vector = encode_vector(rng.standard_normal(384).astype(np.float16))
        fields = profile.fields
        version, incarnation, model = profile.version, profile.incarnation, profile.model_version
        out.append(
            ProfileDelta(user, version, "full", incarnation, 0, [], model, 0, fields, vector)
        )
    return out


def clone(template: ProfileDelta, user: str, version: int, now_ms: int = 0) -> ProfileDelta:
    return ProfileDelta(
        user, version, "full", f"{user}@bench", template.event_time_ms, [], template.model_version,
        changed=template.changed, interest=template.interest, processed_ms=now_ms,
    )  # fmt: skip


def fill(store: ProfileStore, templates: list[ProfileDelta], users: int) -> float:
    started = time.perf_counter()
    for start in range(0, users, 1000):
        batch = [
            clone(templates[n % len(templates)], f"b{n:07d}", 1)
            for n in range(start, min(start + 1000, users))
        ]
        store.apply(Batch(batch))
    return time.perf_counter() - started


class Serve:
    """``python -m dataflow serve`` as a process on free ports, with API keys on (as
    deployed): every request carries ``Authorization: Bearer <key>``."""

    def __init__(self, store: str, log: Path, *extra: str) -> None:
        from tests.support.kafka_broker import free_port

        self.port, ops_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ops = f"http://127.0.0.1:{ops_port}"
        self.key, entry = new_key("bench", frozenset(Scope))
        keys = log.with_suffix(".keys.json")
        write_keys(keys, [entry])
        command = [sys.executable, "-m", "dataflow", "serve", "--serve-store", store,
                   "--serve-http-port", str(self.port), "--serve-ops-port", str(ops_port),
                   "--serve-keys-file", str(keys), *extra]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.ops}/healthz", timeout=2):
                    return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)

    def get(self, path: str) -> urllib.request.Request:
        return urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.key}"}
        )


def attack(
    vegeta: str, targets: Path, rate: int, seconds: float, workers: int = 64
) -> dict[str, Any]:
    """One vegeta run; rate 0 = closed loop with ``workers`` connections, as fast as it goes."""
    attack_cmd = [vegeta, "attack", f"-targets={targets}", f"-rate={rate}", f"-duration={seconds}s",
                  "-keepalive=true", "-timeout=5s"]  # fmt: skip
    if rate == 0:
        attack_cmd += [f"-workers={workers}", f"-max-workers={workers}"]
    else:
        attack_cmd += ["-workers=32"]
    run = subprocess.Popen(attack_cmd, stdout=subprocess.PIPE)
    report = subprocess.run(
        [vegeta, "report", "-type=json"], stdin=run.stdout, capture_output=True, check=True
    )
    run.wait()
    raw = json.loads(report.stdout)
    lat = raw["latencies"]
    return {
        "rate_asked": rate,
        "requests": raw["requests"],
        "throughput": round(raw["throughput"], 1),
        "success": raw["success"],
        "p50_ms": lat["50th"] / 1e6,
        "p90_ms": lat["90th"] / 1e6,
        "p99_ms": lat["99th"] / 1e6,
        "max_ms": lat["max"] / 1e6,
        "status_codes": raw["status_codes"],
    }


def write_targets(path: Path, serve: Serve, users: int, n: int = 20_000) -> Path:
    rng = random.Random(1)
    header = f"Authorization: Bearer {serve.key}"
    path.write_text(
        "".join(
            f"GET {serve.url}/users/b{rng.randrange(users):07d}\n{header}\n\n" for _ in range(n)
        )
    )
    return path


def latency_case(
    name: str, store_url: str, users: int, vegeta: str, work: Path, seconds: float
) -> dict[str, Any]:
    serve = Serve(store_url, work / f"serve-{name}.log", "--no-serve-consume")
    try:
        targets = write_targets(work / f"targets-{name}.txt", serve, users)
        attack(vegeta, targets, 500, 3)  # warm-up: connections, page cache
        fixed = attack(vegeta, targets, 1000, seconds)
        steps = []
        for rate in (2000, 3000, 4000, 5000, 6000, 8000):
            step = attack(vegeta, targets, rate, max(seconds / 2, 5))
            steps.append(step)
            if step["p99_ms"] > TARGET_P99_MS or step["success"] < 1.0:
                break
        closed = attack(vegeta, targets, 0, max(seconds / 2, 5), workers=32)
    finally:
        serve.stop()
    sustained = [s["rate_asked"] for s in [fixed, *steps]
                 if s["p99_ms"] <= TARGET_P99_MS and s["success"] == 1.0]  # fmt: skip
    return {
        "store": name,
        "users": users,
        "fixed_1000": fixed,
        "steps": steps,
        "max_rate_p99_within_target": max(sustained, default=None),
        "closed_loop": closed,
    }


def freshness_case(
    name: str,
    store_url: str,
    users: int,
    templates: list[ProfileDelta],
    vegeta: str,
    work: Path,
    seconds: float,
    broker: Any,
    rate: int = 1000,
) -> dict[str, Any]:
    from confluent_kafka import Producer

    tag = uuid.uuid4().hex[:8]
    deltas_topic, segments_topic = f"bench-deltas-{tag}", f"bench-segments-{tag}"
    broker.create_topic(deltas_topic, partitions=3)
    broker.create_topic(segments_topic, partitions=3)
    serve = Serve(store_url, work / f"serve-ingest-{name}.log", "--brokers", broker.bootstrap,
                  "--deltas-topic", deltas_topic, "--segments-topic", segments_topic)  # fmt: skip
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    stop = threading.Event()
    produced = [0]

    def feed() -> None:  # a steady stream of full deltas for the stored users
        version, interval, next_at = 2, 1 / rate, time.perf_counter()
        while not stop.is_set():
            for n in range(users):
                if stop.is_set():
                    return
                delta = clone(templates[n % len(templates)], f"b{n:07d}", version,
                              time.time_ns() // 1_000_000)  # fmt: skip
                producer.produce(
                    deltas_topic, key=delta.user_id.encode(), value=delta_to_json(delta)
                )
                producer.poll(0)
                produced[0] += 1
                next_at += interval
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            version += 1

    delays_ms: list[float] = []
    stalls = [0]
    feeder = threading.Thread(target=feed, daemon=True)
    try:
        targets = write_targets(work / f"targets-ingest-{name}.txt", serve, users)
        feeder.start()
        reads: dict[str, Any] = {}
        reader = threading.Thread(
            target=lambda: reads.update(attack(vegeta, targets, 1000, seconds)), daemon=True
        )
        reader.start()
        probe, version, end = "probe-user", 0, time.monotonic() + seconds
        while time.monotonic() < end:
            version += 1
            sent = time.perf_counter()
            delta = clone(templates[0], probe, version, time.time_ns() // 1_000_000)
            producer.produce(deltas_topic, key=probe.encode(), value=delta_to_json(delta))
            producer.poll(0)
            while True:
                try:
                    with urllib.request.urlopen(serve.get(f"/users/{probe}"), timeout=2) as r:
                        if json.loads(r.read())["version"] >= version:
                            break
                except (urllib.error.URLError, TimeoutError, ConnectionError):
                    stalls[0] += 1  # not there yet (404), or no answer within 2 s
                if time.perf_counter() - sent > 30:
                    break
                time.sleep(0.01)
            delays_ms.append((time.perf_counter() - sent) * 1000)
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - sent)))
        reader.join(seconds + 30)
        with urllib.request.urlopen(f"{serve.ops}/healthz", timeout=5) as r:
            health = json.loads(r.read())
        with urllib.request.urlopen(f"{serve.ops}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        stop.set()
        feeder.join(5)
        producer.flush(30)
        serve.stop()
    d = np.array(delays_ms)
    return {
        "store": name,
        "ingest_deltas_per_s": round(produced[0] / seconds, 1),
        "probes": len(delays_ms),
        "delay_p50_ms": float(np.percentile(d, 50)),
        "delay_p99_ms": float(np.percentile(d, 99)),
        "delay_max_ms": float(d.max()),
        "within_1s": float((d <= 1000).mean()),
        "reads_at_1000": reads,
        "probe_polls_failed": stalls[0],
        "lag_at_end": health["consumer"]["lag"] if health.get("consumer") else None,
        "store_within_1s": histogram_share(metrics, "profilestream_serve_delta_delay_seconds", 1.0),
        "serve_metrics": [
            line
            for line in metrics.splitlines()
            if line.startswith(
                (
                    "profilestream_serve_store_batch_seconds",
                    "profilestream_serve_delta_delay_seconds",
                )
            )
        ],
    }


def histogram_share(exposition: str, name: str, bound: float) -> float:
    """The share of a Prometheus histogram's observations at or below ``bound`` (a bucket)."""
    for family in text_string_to_metric_families(exposition):
        if family.name == name:
            samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
            count = samples.get((f"{name}_count", None), 0.0)
            return samples[(f"{name}_bucket", str(bound))] / count if count else float("nan")
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each fixed run")
    parser.add_argument(
        "--stores", default="sqlite,redis", help="comma-separated: sqlite, redis (default both)"
    )
    parser.add_argument("--no-kafka", action="store_true", help="skip the freshness runs")
    parser.add_argument("--no-latency", action="store_true", help="only the freshness runs")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run everything (servers, vegeta, Redis, Kafka) at this niceness, e.g. -10 as root "
        "on a machine other jobs share: it measures the service, not the neighbours",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started
    load_before = os.getloadavg()[0]
    vegeta = vegeta_binary()
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    redis = RedisServer(work)
    redis.start()
    broker = None
    try:
        started = time.perf_counter()
        templates = template_profiles()
        print(f"{len(templates)} template profiles from the flow in "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        known = {"sqlite": f"sqlite://{work / 'profiles.db'}", "redis": redis.url}
        stores = {name: known[name] for name in args.stores.split(",")}
        filled = {}
        for name, url in stores.items():
            store = open_store(url)
            filled[name] = fill(store, templates, args.users)
            print(f"{name}: {store.size():,} users written in {filled[name]:.1f} s", flush=True)
            store.close()
        doc_bytes = np.mean([len(delta_to_json(t)) for t in templates])
        latency: list[dict[str, Any]] = []
        for name, url in stores.items():
            if not args.no_latency:
                latency.append(latency_case(name, url, args.users, vegeta, work, args.seconds))
                report(latency[-1:], [])
        freshness: list[dict[str, Any]] = []
        if not args.no_kafka:
            from tests.support.kafka_broker import KafkaBroker

            (work / "kafka").mkdir()
            broker = KafkaBroker(work / "kafka")
            broker.start()
            # The first minute of a fresh broker is slower (JIT, page cache): a discarded
            # run first, so that no store is measured against a cold broker.
            first = next(iter(stores.items()))
            freshness_case(*first, args.users, templates, vegeta, work, 10, broker)
            for name, url in stores.items():
                freshness.append(
                    freshness_case(
                        name, url, args.users, templates, vegeta, work, args.seconds, broker
                    )
                )
                report([], freshness[-1:])
    finally:
        if broker is not None:
            broker.stop()
        redis.stop()
    print("\nall runs:")
    report(latency, freshness)
    result = {
        "machine": machine_info(
            load_before,
            **{p: package_version(p) for p in ("starlette", "uvicorn", "redis", "uvloop")},
            redis_server=subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            vegeta=VEGETA,
        ),
        "users": args.users,
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "profile_json_bytes_mean": round(float(doc_bytes)),
        "fill_seconds": filled,
        "latency": latency,
        "freshness": freshness,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)


def report(latency: list[dict[str, Any]], freshness: list[dict[str, Any]]) -> None:
    if latency:
        print()
        print_header(
            "store   users    rate asked  achieved  success  p50 ms  p90 ms  p99 ms  max ms"
        )
    for case in latency:
        for run in [case["fixed_1000"], *case["steps"], case["closed_loop"]]:
            rate = "closed" if run["rate_asked"] == 0 else fmt(run["rate_asked"])
            print(
                f"{case['store']:<7} {case['users']:>7,} {rate:>10} {fmt(run['throughput']):>9} "
                f"{run['success']:>8.4f} {run['p50_ms']:>7.2f} {run['p90_ms']:>7.2f} "
                f"{run['p99_ms']:>7.2f} {run['max_ms']:>7.1f}"
            )
        print(f"        highest fixed rate with p99 <= {TARGET_P99_MS} ms: "
              f"{fmt(case['max_rate_p99_within_target'])}")  # fmt: skip
    if freshness:
        print()
        print_header(
            "store   ingest/s  probes  delay p50 ms  p99 ms  max ms  <=1s   store<=1s  "
            "reads p50  p99 ms"
        )
        for f in freshness:
            reads = f["reads_at_1000"]
            print(
                f"{f['store']:<7} {fmt(f['ingest_deltas_per_s']):>8} {f['probes']:>7} "
                f"{f['delay_p50_ms']:>12.1f} {f['delay_p99_ms']:>7.1f} {f['delay_max_ms']:>7.1f} "
                f"{f['within_1s']:>5.3f} {f['store_within_1s']:>10.3f} "
                f"{reads.get('p50_ms', 0):>10.2f} "
                f"{reads.get('p99_ms', 0):>7.2f}"
            )


if __name__ == "__main__":
    main()
