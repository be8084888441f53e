"""``profilestream train`` and ``eval-recsys``: the item model, offline and on a benchmark.

profilestream train --events events.jsonl --out models/
profilestream eval-recsys --sequences Beauty.txt --attributes Beauty_item2attributes.json --json
profilestream eval-recsys --taobao UserBehavior.csv
profilestream eval-recsys --sequences Beauty.txt --attributes ... --prequential --plot beauty.png

``train`` reads a historical event log (the JSONL the flow consumes), groups each user's item
events in time order, trains :func:`operators.recsys.item_model.train_item_model` and writes a new
version folder under ``--out``; a flow started with ``--item-model-dir`` on that folder picks
it up without a restart.

``eval-recsys`` measures the whole system on a public benchmark with the protocol of its
published tables: it trains the model on everything but each user's last interaction,
replays that part as events through the real dataflow (file source, all operators, one
profile per user), reads the profiles back from the deltas it wrote, ranks every item for
each user (earlier items masked) and scores the held-out item with HR@K and NDCG@K.
With ``--prequential`` it runs :mod:`dataflow.eval.prequential` instead: every event after a
cut-off is predicted before it is applied, by the live profile, by the profile frozen at the
cut-off and by popularity, and HR@20 over time is written as a PNG (and JSON with ``--json``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.eval.datasets import Benchmark, replay_lines
from dataflow.eval.training import Log, train
from operators.profile import UserItemMemory, materialize, memory_from_fields
from operators.recsys import (
    DEFAULT_KS,
    ItemInteraction,
    ItemModel,
    hit_rate_and_ndcg,
    score_users,
    target_ranks,
)


@dataclass
class RecsysReport:
    """What ``eval-recsys`` measured."""

    dataset: str
    users: int
    events: int
    items: int
    train_s: float
    replay_s: float
    rank_s: float
    metrics: dict[str, float]

    @property
    def events_per_s(self) -> float:
        return self.events / self.replay_s if self.replay_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "users": self.users,
            "events": self.events,
            "items": self.items,
            "events_per_s": round(self.events_per_s, 1),
            "train_s": round(self.train_s, 1),
            "replay_s": round(self.replay_s, 1),
            "rank_s": round(self.rank_s, 1),
            **self.metrics,
        }


def replay_through_flow(
    histories: dict[str, list[ItemInteraction]], model_root: Path, work: Path, workers: int
) -> dict[str, UserItemMemory | None]:
    """Run the real dataflow over the histories; return each user's item memory from the deltas.

    The flow runs as ``profilestream run`` in its own process, as it is deployed (and because
    Bytewax's runtime registers process-wide metrics that a second in-process run rejects).
    """
    events = work / "events.jsonl"
    with events.open("wb") as f:
        for line in replay_lines(histories):
            f.write(line + b"\n")
    out = work / "out"
    command = [sys.executable, "-m", "dataflow", "run", "--source", "file", "--sink", "file"]
    command += ["--input-path", str(events), "--output-dir", str(out)]
    command += ["--item-model-dir", str(model_root), "--workers", str(workers)]
    # Port 0: the API server takes any free port, so parallel runs never collide.
    subprocess.run([*command, "--metrics-port", "0"], check=True)
    profiles = materialize((out / "deltas.jsonl").read_bytes().splitlines())
    memories: dict[str, UserItemMemory | None] = {}
    for user, profile in profiles.items():
        memories[user] = memory_from_fields(profile.fields)
    return memories


def rank_targets(
    model: ItemModel,
    memories: list[UserItemMemory | None],
    seen: list[list[str]],
    targets: list[str],
    chunk: int = 2048,
) -> np.ndarray:
    """0-based rank of each user's target among all items, the user's earlier items masked."""
    unknown = np.iinfo(np.int64).max  # a target the model never saw is never a hit
    ranks = np.empty(len(targets), np.int64)
    for start in range(0, len(targets), chunk):
        stop = start + chunk
        scores = score_users(model, memories[start:stop])
        rows = [i for i, t in enumerate(targets[start:stop]) if t in model.index]
        target_index = np.array([model.index[targets[start + i]] for i in rows], np.int64)
        masked = [
            np.array([model.index[x] for x in seen[start + i] if x in model.index], np.int64)
            for i in rows
        ]
        ranks[start:stop] = unknown
        ranks[start + np.array(rows, np.int64)] = target_ranks(scores[rows], target_index, masked)
    return ranks


def evaluate(bench: Benchmark, workers: int = 1, log: Log = print) -> RecsysReport:
    """Train on the replayed part, replay it through the dataflow, rank the held-out items."""
    replay, targets = bench.split_last()
    if not targets:
        raise ValueError(f"{bench.name}: no user has two interactions to hold one out")
    users = sorted(targets)
    n_events = sum(len(h) for h in replay.values())
    log(f"{bench.name}: {len(users):,} users, {n_events:,} events to replay")
    work = Path(tempfile.mkdtemp(prefix="profilestream-eval-"))
    try:
        started = time.perf_counter()
        model, _ = train(replay, bench.attributes or None, work / "models")
        train_s = time.perf_counter() - started
        log(f"trained item model {model.version} in {train_s:.1f} s: {model.n_items:,} items")
        started = time.perf_counter()
        memories = replay_through_flow(replay, work / "models", work, workers)
        replay_s = time.perf_counter() - started
        log(f"replayed through the dataflow in {replay_s:.1f} s")
        started = time.perf_counter()
        ranks = rank_targets(
            model,
            [memories.get(u) for u in users],
            [[x.item_id for x in replay[u]] for u in users],
            [targets[u].item_id for u in users],
        )
        rank_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = hit_rate_and_ndcg(ranks, DEFAULT_KS)
    return RecsysReport(
        bench.name, len(users), n_events, model.n_items, train_s, replay_s, rank_s, metrics
    )
