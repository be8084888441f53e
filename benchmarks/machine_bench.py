"""The user machine alone: events/s of the per-user step without Bytewax, and whether a change
kept its outputs.

What: flow_bench's no-text stream (240,000 events, 20,000 users; catalog items get seeded
random vectors, so no model loads) is parsed and fed, one event at a time, to each user's
:class:`~operators.user.UserMachine`, built as ``dataflow run`` builds it at its defaults
(segments, risk, windows, 1 s coalescing, Prometheus counters). The wall clock is simulated
(10 events per millisecond) and the watermark follows the newest event less the allowed
lateness, so every run makes the same outputs; every 1,000 events the users whose timers
are due are woken, as Bytewax wakes them, and every machine rests after it ran. events/s =
events / seconds of that loop (parsing included); the outputs are counted by kind and
hashed.

``--against REV`` also runs git revision ``REV`` (checked out into a temporary worktree),
alternating with the working tree, each run in a process of its own and with one hash
seed: the ratio of the two means is the change's effect on the per-event cost, and equal
hashes say the change kept every output, byte for byte.

Why: the machine is about four fifths of the flow's time (docs/benchmarks.md), and a
change of a few percent drowns in the whole flow's run-to-run spread. Alternating runs of
the machine alone, with no broker, sink or Bytewax scheduling, share the VM's drift; on
this VM one tree's runs still spread by up to 15%, so a change of a few percent needs
more ``--runs`` than the default. The hashes say whether a speed-up changed what users
receive.

    python benchmarks/machine_bench.py                        # this tree, 3 runs
    python benchmarks/machine_bench.py --against HEAD~1       # alternating, 3 runs each

The revision must have this tree's machine API: ``UserMachine`` and
``dataflow.factories.machine_settings`` (from 2026-12-07).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PER_MS = 10  # the simulated wall clock: 10,000 events a second
WAKE_EVERY = 1_000  # events between two rounds of timers


def run_machines(stream: Path, items: Path) -> dict[str, Any]:
    """One run over ``stream`` with the project modules found first on ``sys.path``."""
    import msgspec
    import numpy as np

    from dataflow import metrics
    from dataflow.config import Config
    from dataflow.factories import machine_settings
    from operators.ingest import Event, parse_event
    from operators.recsys import ItemVectors
    from operators.user import Ports, UserMachine

    config = Config()
    data = np.load(items)
    vectors = ItemVectors("bench", "random", list(data["ids"]), data["vectors"])

    class Served:
        def current(self) -> ItemVectors:
            return vectors

    settings = machine_settings(config, config.embed_model, vectors.vectors.shape[1], {})
    ports = Ports(vectors=None, catalog=Served(), observer=metrics.UserMetrics())
    lines = stream.read_bytes().splitlines()
    lateness = config.allowed_lateness_ms
    machines: dict[str, UserMachine] = {}
    walls: list[tuple[int, str]] = []  # (wall ms, user): when each machine asked to be woken
    timers: list[tuple[int, str]] = []  # (event ms, user)
    digest, kinds = hashlib.blake2b(digest_size=16), Counter[str]()
    encode = msgspec.json.Encoder(enc_hook=lambda o: o.tolist()).encode

    def record(out: list[Any]) -> None:
        for item in out:
            kinds[type(item).__name__] += 1
            digest.update(encode(item))

    def settle(user: str, machine: UserMachine, now: int) -> None:
        """What the Bytewax adapter does after each activation: drop or rest, ask to wake."""
        if machine.finished():
            del machines[user]
            return
        machine.rest()
        wall, event = machine.next_due(now)
        if wall:
            heapq.heappush(walls, (wall, user))
        if event:
            heapq.heappush(timers, (event, user))

    started = time.perf_counter()
    watermark = 0
    for i, line in enumerate(lines):
        now = i // EVENTS_PER_MS
        event = parse_event(line, ingest_ms=now)
        if not isinstance(event, Event):
            record([event])  # a dead letter
        else:
            watermark = max(watermark, event.ts_ms - lateness)
            machine = machines.get(event.user_id)
            if machine is None:
                machine = machines[event.user_id] = UserMachine(settings, ports)
            record(machine.receive([event], now))
            settle(event.user_id, machine, now)
        if i % WAKE_EVERY == WAKE_EVERY - 1:
            due: set[str] = set()
            while walls and walls[0][0] <= now:
                due.add(heapq.heappop(walls)[1])
            while timers and timers[0][0] <= watermark:
                due.add(heapq.heappop(timers)[1])
            for user in sorted(due):
                awake = machines.get(user)
                if awake is None:
                    continue
                wall, event_ms = awake.next_due(now)  # an older request may be stale
                if (wall and wall <= now) or (event_ms and event_ms <= watermark):
                    record(awake.on_time(now, watermark))
                    settle(user, awake, now)
    end, now = watermark + lateness, len(lines) // EVENTS_PER_MS
    for user in sorted(machines):
        record(machines[user].finish(now, end))
    seconds = time.perf_counter() - started
    return {
        "events": len(lines),
        "seconds": seconds,
        "events_per_s": len(lines) / seconds,
        "outputs": dict(sorted(kinds.items())),
        "digest": digest.hexdigest(),
    }


def write_inputs(folder: Path, events: int, users: int, seed: int) -> tuple[Path, Path]:
    """flow_bench's no-text stream and its catalog, with seeded random item vectors."""
    import numpy as np

    from benchmarks.flow_bench import build_streams
    from dataflow.sim import DEFAULT_CATALOG_ITEMS, build_catalog

    stream = build_streams(events, 0, users, seed)[0].write(folder / "no-text.jsonl")
    catalog = build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(catalog), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = folder / "items.npz"
    np.savez(items, ids=np.array([c.item_id for c in catalog]), vectors=vectors)
    return stream, items


def run_in(tree: Path, stream: Path, items: Path) -> dict[str, Any]:
    """One run in a process of its own, importing the project from ``tree``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree)]
    command += [str(stream), str(items)]
    # One hash seed for every run: a revision that iterates a set of strings into an
    # output then makes the same bytes as another that does the same.
    env = os.environ | {"PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tree, env=env)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a git revision to alternate with the working tree")
    parser.add_argument("--runs", type=int, default=3, help="runs of each tree")
    parser.add_argument("--events", type=int, default=240_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # tree, stream, items
    args = parser.parse_args()
    if args.worker:
        tree, stream, items = args.worker
        sys.path.insert(0, tree)
        print(json.dumps(run_machines(Path(stream), Path(items))))
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import dated_result, fmt, machine_info, print_header

    work = Path(tempfile.mkdtemp(prefix="machine-bench-"))
    stream, items = write_inputs(work, args.events, args.users, args.seed)
    trees = {"working tree": ROOT}
    if args.against:
        other = work / "against"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(other), args.against],
            cwd=ROOT,
            check=True,
        )
        trees[args.against] = other
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    print_header(f"{'tree':<16} {'run':>3} {'events/s':>9} {'outputs':>8}  digest")
    try:
        for run in range(args.runs):
            for name, tree in trees.items():
                result = run_in(tree, stream, items)
                runs[name].append(result)
                total = sum(result["outputs"].values())
                rate = fmt(result["events_per_s"])
                print(f"{name:<16} {run + 1:>3} {rate:>9} {fmt(total):>8}  {result['digest']}")
    finally:
        if args.against:
            remove = ["git", "worktree", "remove", "--force", str(work / "against")]
            subprocess.run(remove, cwd=ROOT, check=False)
    means = {name: statistics.mean(r["events_per_s"] for r in rs) for name, rs in runs.items()}
    digests = {name: {r["digest"] for r in rs} for name, rs in runs.items()}
    print()
    for name, mean in means.items():
        print(f"{name}: mean {fmt(mean)} events/s; outputs {runs[name][0]['outputs']}")
    summary: dict[str, Any] = {"means": means}
    if args.against:
        ratio = means["working tree"] / means[args.against]
        same = digests["working tree"] == digests[args.against]
        summary |= {"ratio": ratio, "same_outputs": same}
        print(f"working tree / {args.against}: {ratio:.3f}; same outputs: {same}")
    out = args.out or dated_result("machine_bench")
    settings = {"events": args.events, "users": args.users, "seed": args.seed}
    report = {
        "machine": machine_info(load_before),
        "settings": settings | {"against": args.against},
    }
    out.write_text(json.dumps(report | {"runs": runs, **summary}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
