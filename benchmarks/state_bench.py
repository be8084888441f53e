"""Bytes of state per user: in the flow's memory and in its recovery store, at 100k and 1M users.

What: for each population, every user acts a few times over the last week (views, clicks,
carts, purchases and logins across sessions, categories and brands, in event-time order
across users), so every window span holds buckets, distinct keys and last items -- an active
user, not a one-event visitor. The real flow (``python -m dataflow run``, default windows,
recovery on) reads the stream from a file, with the catalog's item vectors embedded
beforehand and served (``--item-vectors-dir``), as ``flow_bench`` and a deployment run it;
then:

* memory per user = (peak RSS of the run - peak RSS of the same flow over 1,000 users) /
  (users - 1,000): the model, the runtime and the buffers cancel out, but not the users
  whose state is decoded while a delta is pending (those active in the last emit
  interval: about one second of events); so also the marginal bytes per user between the
  two populations, where that live set (the same events per second) cancels too.
  ``--model-embeds-items`` serves no vectors, as this bench did until 2026-12-07: every
  item event then waits for the model to embed its item's text, and the users touched
  while the model loads (~20 s) wait with their events -- a start-up backlog the
  1,000-user baseline does not have, counted per user (since 2026-12-07 bounded by
  ``--max-users-waiting``: 10,000 users);
* the peer: the trivial keyed Bytewax flow (``benchmarks/trivial_flow.py``: ``stateful_map``)
  keeping the same number of bytes per user as this population's stored state, made anew at
  every event, with recovery every 5 s, over the same stream and populations: what Bytewax
  itself needs to hold that state. Its bytes per user are worked out the same way, and the
  ratio says what the profile flow adds;
* recovery store per user = size of the recovery directory after the run / users, and the
  same after ``VACUUM`` (the snapshots alone, without the pages SQLite keeps free);
* stored state per user = mean length of a user's resting state (compressed MessagePack:
  what rests in memory between deltas and goes into every snapshot: the profile and the
  applications' risk memory and segment memberships), from a sample folded by the same
  functions, with random unit vectors standing in for the catalog's; and the MessagePack
  alone, uncompressed.

Why: state must stay bounded per user (target <= 4 KB), and a cluster's memory is sized by
users x bytes per user.

    python benchmarks/state_bench.py                 # 100k and 1M users, ~15 minutes
    python benchmarks/state_bench.py --users 100000  # one population
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import numpy as np

from benchmarks.common import dated_result, fmt, machine_info, print_header
from dataflow.sim import CatalogItem, build_catalog
from operators.apps import Applications, RiskParams, after_event, load_segment_book
from operators.ingest import Event, parse_event
from operators.ingest.units import WEEK_MS
from operators.profile import ProfileParams, UserState, apply_event, encode_state, pack_state

ROOT = Path(__file__).resolve().parents[1]
RESULTS = dated_result("state_bench")
END_MS = 1_717_200_000_000  # 2024-06-01
CATALOG_ITEMS = 2_000
KINDS = ("view", "view", "view", "click", "click", "add_to_cart", "purchase", "login")


def write_stream(
    path: Path, users: int, per_user: int, seed: int, catalog: list[CatalogItem]
) -> int:
    """``per_user`` events for each of ``users`` on ``catalog``'s items, spread over the last
    week, in time order."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        session = 0
        for k in range(per_user):
            ts = END_MS - rng.randrange(WEEK_MS)
            session += rng.random() < 0.4
            kind = rng.choice(KINDS)
            item = rng.choice(catalog)
            event: dict[str, object] = {
                "event_id": f"e{u}-{k}",
                "user_id": f"u{u}",
                "ts": ts,
                "type": kind,
                "session_id": f"s{u}-{session}",
                "device_id": f"d{u}",
                "channel": "app",
            }
            if kind != "login":
                event |= {"item_id": item.item_id, "category": item.category, "brand": item.brand}
            if kind == "purchase":
                event["price"] = item.price
            rows.append((ts, msgspec.json.encode(event)))
    rows.sort(key=lambda row: row[0])
    # First, one search: with the item vectors served no other event needs the text model.
    # Its query makes every run hold the loaded model from the start, as a deployment whose
    # texts arrive at once does, so the baseline cancels it. (Until 2026-12-07 it came last,
    # and the model loaded at the end into memory the users' churn had left free: one run
    # each gave 6.4 KB per user first against 5.3 last at 100,000 users, but 5.0 against
    # 5.1 at 200,000, within the spread between runs.)
    search = {"event_id": "e-search", "user_id": "u0", "ts": END_MS - WEEK_MS, "type": "search"}
    rows.insert(0, (END_MS - WEEK_MS, msgspec.json.encode(search | {"text": "running shoes"})))
    path.write_bytes(b"".join(line + b"\n" for _, line in rows))
    return len(rows)


def fold_states(events: Iterable[Event], seed: int) -> list[UserState]:
    """Each user's final state, folded by ``apply_event`` and the applications
    (``after_event``: risk memory, segment memberships). An event that moves the interest
    vector brings a seeded random unit vector, as embeddings are: a constant one would
    compress to nothing in the resting state (it did: 644 B per user on 2026-12-07)."""
    params = ProfileParams()
    apps = Applications(load_segment_book(windows=params.windows), params.windows, RiskParams())
    rng = np.random.default_rng(seed)
    states: dict[str, UserState | None] = {}
    for event in events:
        vector = None
        if params.moves_interest(event):
            vector = rng.standard_normal(384).astype(np.float32)
            vector /= np.linalg.norm(vector)
        state, _ = apply_event(states.get(event.user_id), event, vector, params, dim=384)
        if state is not None:
            after_event(state, event, apps)
        states[event.user_id] = state
    return [state for state in states.values() if state is not None]


def stored_state_bytes(path: Path, sample_users: int) -> tuple[float, float]:
    """Mean bytes of the state of users ``u0`` to ``u<sample_users - 1>`` (see
    :func:`fold_states`): as it rests (compressed), and as MessagePack."""
    wanted = {f"u{u}" for u in range(sample_users)}
    with path.open("rb") as lines:
        parsed = map(parse_event, lines)
        folded = fold_states((e for e in parsed if isinstance(e, Event) and e.user_id in wanted), 0)
    resting = float(np.mean([len(encode_state(s)) for s in folded]))
    return resting, float(np.mean([len(pack_state(s)) for s in folded]))


def serve_catalog(work: Path, items: list[CatalogItem]) -> list[str]:
    """Embed the stream's catalog as a deployment does (``profilestream embed-items``, in a
    process of its own: this one stays small, as its children inherit its RSS at fork) and
    return the flow's arguments that serve the vectors."""
    catalog, vectors = work / "catalog.jsonl", work / "item-vectors"
    entries = [
        {"item_id": c.item_id, "title": c.title, "category": c.category, "brand": c.brand}
        for c in items
    ]
    catalog.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in entries))
    command = [sys.executable, "-m", "dataflow", "embed-items", "--catalog", str(catalog)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "--out", str(vectors)], cwd=ROOT, env=env, check=True)
    return ["--item-vectors-dir", str(vectors)]


def peak_rss(command: list[str], log_path: Path) -> tuple[int, float]:
    """Run ``command`` (in this tree); its own peak RSS in bytes and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[1]} failed: see {log_path}")
    return usage.ru_maxrss * 1024, time.perf_counter() - started


def run_flow(events: Path, work: Path, flow_args: list[str]) -> tuple[int, int, int, float]:
    """Run the flow over ``events`` with recovery (and ``flow_args``).

    Returns the peak RSS, the recovery store's size on disk and after ``VACUUM`` (its live
    data), and the seconds it took.
    """
    recovery, out = work / "recovery", work / "out"
    command = [sys.executable, "-m", "dataflow", "run", "--input-path", str(events)]
    command += ["--output-dir", str(out), "--recovery-dir", str(recovery)]
    command += ["--metrics-port", "0", *flow_args]
    peak, seconds = peak_rss(command, work / "flow.log")
    store = sum(f.stat().st_size for f in recovery.rglob("*") if f.is_file())
    live = 0
    for db in recovery.glob("*.sqlite3"):
        with sqlite3.connect(db) as connection:
            connection.execute("VACUUM")
        live += db.stat().st_size
    return peak, store, live, seconds


def run_trivial(events: Path, work: Path, state_bytes: int) -> int:
    """The peer's peak RSS over ``events``, holding ``state_bytes`` per user, recovery on."""
    command = [sys.executable, str(ROOT / "benchmarks" / "trivial_flow.py"), "--input"]
    command += [str(events), "--output", str(work / "trivial.txt")]
    command += ["--state-bytes", str(state_bytes), "--recovery-dir", str(work / "trivial-rec")]
    return peak_rss(command, work / "trivial.log")[0]


@dataclass
class Population:
    users: int
    events: int
    flow_seconds: float
    peak_rss_mb: float
    memory_bytes_per_user: float
    recovery_bytes_per_user: float
    recovery_live_bytes_per_user: float
    stored_state_bytes_per_user: float
    msgpack_state_bytes_per_user: float  # the same, uncompressed
    trivial_peak_rss_mb: float  # the peer, holding the stored state's bytes per user
    trivial_memory_bytes_per_user: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--events-per-user", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--model-embeds-items", action="store_true", help="serve no item vectors (see above)"
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="state-bench-"))
    catalog = build_catalog(CATALOG_ITEMS, np.random.default_rng(args.seed))
    flow_args = [] if args.model_embeds_items else serve_catalog(work, catalog)
    baseline_users = 1_000
    populations = []
    base_rss = base_trivial = 0
    rss_by_users: dict[int, int] = {}
    trivial_by_users: dict[int, int] = {}
    for users in [baseline_users, *sorted(args.users)]:
        case = work / f"u{users}"
        case.mkdir()
        path = case / "events.jsonl"
        events = write_stream(path, users, args.events_per_user, args.seed, catalog)
        state, packed = stored_state_bytes(path, 2_000)
        rss, store, live, seconds = run_flow(path, case, flow_args)
        trivial = run_trivial(path, case, round(state))
        print(f"  {users:,} users: {events:,} events in {seconds:.0f} s", file=sys.stderr)
        rss_by_users[users] = rss
        trivial_by_users[users] = trivial
        if users == baseline_users:
            base_rss, base_trivial = rss, trivial
            continue
        populations.append(
            Population(
                users=users,
                events=events,
                flow_seconds=seconds,
                peak_rss_mb=rss / 2**20,
                memory_bytes_per_user=(rss - base_rss) / (users - baseline_users),
                recovery_bytes_per_user=store / users,
                recovery_live_bytes_per_user=live / users,
                stored_state_bytes_per_user=state,
                msgpack_state_bytes_per_user=packed,
                trivial_peak_rss_mb=trivial / 2**20,
                trivial_memory_bytes_per_user=(trivial - base_trivial) / (users - baseline_users),
            )
        )
        path.unlink()
    print_header(
        f"{'users':>10} {'events':>10} {'flow s':>7} {'peak RSS MB':>11} {'memory B/user':>13} "
        f"{'store B/user':>12} {'(live data)':>11} {'state B/user':>12} "
        f"{'trivial B/user':>14} {'ratio':>5}"
    )
    for p in populations:
        print(
            f"{p.users:>10,} {p.events:>10,} {p.flow_seconds:>7.0f} {fmt(p.peak_rss_mb):>11} "
            f"{fmt(p.memory_bytes_per_user):>13} {fmt(p.recovery_bytes_per_user):>12} "
            f"{fmt(p.recovery_live_bytes_per_user):>11} {fmt(p.stored_state_bytes_per_user):>12} "
            f"{fmt(p.trivial_memory_bytes_per_user):>14} "
            f"{p.memory_bytes_per_user / p.trivial_memory_bytes_per_user:>5.2f}"
        )
    sizes = sorted(u for u in rss_by_users if u != baseline_users)
    marginal = trivial_marginal = None
    if len(sizes) >= 2:
        low, high = sizes[0], sizes[-1]
        marginal = (rss_by_users[high] - rss_by_users[low]) / (high - low)
        trivial_marginal = (trivial_by_users[high] - trivial_by_users[low]) / (high - low)
        print(
            f"\nmarginal memory per user from {low:,} to {high:,} users: {marginal:,.0f} bytes "
            f"(the trivial flow: {trivial_marginal:,.0f})"
        )
    print(
        f"the {baseline_users:,}-user runs (subtracted): peak RSS {base_rss / 2**20:,.0f} MB, "
        f"the trivial flow {base_trivial / 2**20:,.0f} MB"
    )
    print(f"stored state: {populations[-1].msgpack_state_bytes_per_user:,.0f} bytes of "
          "MessagePack per user, compressed to the state B/user above")  # fmt: skip
    print(f"{args.events_per_user} events per user over a week; default windows; target "
          "<= 4,096 bytes per user")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(load_before),
        "settings": {
            "events_per_user": args.events_per_user,
            "seed": args.seed,
            "item_vectors_served": not args.model_embeds_items,
        },
        "baseline": {
            "users": baseline_users,
            "peak_rss_mb": base_rss / 2**20,
            "trivial_peak_rss_mb": base_trivial / 2**20,
        },
        "populations": [asdict(p) for p in populations],
        "marginal_memory_bytes_per_user": marginal,
        "trivial_marginal_memory_bytes_per_user": trivial_marginal,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
