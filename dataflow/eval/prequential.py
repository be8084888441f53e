"""Prequential evaluation: predict each event of a replayed benchmark just before applying it.

Leave-one-out scores one held-out item per user; it cannot show what real-time updates buy.
Here the benchmark's replay (every user's history but the held-out last item, all users
interleaved in event-time order as :func:`~dataflow.eval.datasets.replay_lines` emits it)
is walked once. The item model is trained, as ``profilestream train`` would, on the first
``cutoff`` fraction of the stream only, so no later prediction uses a model that saw its
target. Each user's :class:`~operators.recsys.item_model.UserItemMemory` is updated event by event
with :func:`~operators.recsys.item_model.update_memory`, as the dataflow does. Each event after the
cut-off (or a seeded sample of them) is predicted *before* it is applied, three ways:

- ``live``: from the user's memory as it is now, updated up to the previous event;
- ``frozen``: from the memory the user had at the cut-off (what a nightly batch would serve);
- ``popularity``: the training counts alone.

Each is served as :func:`operators.recsys.recommend.score_items` serves it, so a user without usable
history gets the popularity cold start. The user's earlier items are masked and the target
ranked among all items (:func:`operators.recsys.ranking_metrics.target_ranks`); HR@20 and NDCG@20
are reported per bin of equal numbers of predictions, over time, and overall.

>>> from operators.recsys import ItemInteraction
>>> t0, day = 1_700_000_000_000, 86_400_000
>>> chain = {
...     f"u{u}": [ItemInteraction(f"i{(u + k) % 9}", ts_ms=t0 + (u + k) * day) for k in range(6)]
...     for u in range(12)
... }
>>> report = run_prequential(Benchmark("chain", chain, {}), bins=2, log=lambda _: None)
>>> report.as_json()["predictions"], len(report.bins)
(30, 2)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from dataflow.eval.datasets import Benchmark, replay_lines
from dataflow.eval.training import Log, histories_from_events, train
from operators.ingest import Event, parse_event
from operators.profile import UserItemMemory
from operators.recsys import (
    ItemModel,
    cold_start_scores,
    hit_rate_and_ndcg,
    is_cold,
    score_users,
    target_ranks,
    update_memory,
)

VARIANTS = ("live", "frozen", "popularity")
K = 20
#: The rank of a target the model never saw: it cannot be recommended, a miss at any K.
UNRANKED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class PrequentialBin:
    """HR@20 and NDCG@20 of each variant over consecutive predictions."""

    start_ts_ms: int
    end_ts_ms: int
    start_position: int  # stream positions of the bin's first and last predicted events
    end_position: int
    n: int
    metrics: dict[str, float]  # hr20_<variant>, ndcg20_<variant>

    def as_json(self) -> dict[str, Any]:
        fields = asdict(self)
        return {**{k: v for k, v in fields.items() if k != "metrics"}, **self.metrics}


@dataclass
class PrequentialReport:
    """What :func:`run_prequential` measured."""

    dataset: str
    model_version: str
    events: int  # the stream's length
    cutoff: float
    cutoff_position: int  # the first event the model did not train on
    cutoff_ts_ms: int
    first_ts_ms: int
    last_ts_ms: int
    after_cutoff: int  # events after the cut-off
    predictions: int  # of them, those predicted (all, or a seeded sample)
    bins: list[PrequentialBin]
    overall: dict[str, float]
    #: The same, over predictions for users who had a memory at the cut-off (the others
    #: get the cold start from the frozen profile).
    known_at_cutoff: dict[str, float]
    train_s: float
    walk_s: float
    rank_s: float

    @property
    def timed(self) -> bool:
        """Whether event times order the stream (else plot against stream position)."""
        return self.last_ts_ms > self.first_ts_ms

    def summary(self) -> str:
        """A few lines for the terminal: the overall metrics after the cut-off."""

        def row(name: str, metrics: dict[str, float]) -> str:
            cells = (f"HR@{K} {v}={metrics[f'hr{K}_{v}']:.4f}" for v in VARIANTS)
            return f"  {name}: " + "  ".join(cells)

        known = self.known_at_cutoff
        return "\n".join(
            [
                f"{self.dataset}: {self.predictions:,} of the {self.after_cutoff:,} events after "
                f"the cut-off ({self.cutoff:.0%} of {self.events:,}) predicted before each update",
                f"  train {self.train_s:.1f} s | walk {self.walk_s:.1f} s | "
                f"rank {self.rank_s:.1f} s",
                row("all users", self.overall),
                row(f"users known at the cut-off ({known['n']:,} predictions)", known),
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model_version": self.model_version,
            "events": self.events,
            "cutoff": self.cutoff,
            "cutoff_position": self.cutoff_position,
            "cutoff_ts_ms": self.cutoff_ts_ms,
            "cutoff_time": _when(self.cutoff_ts_ms).isoformat(),
            "after_cutoff": self.after_cutoff,
            "predictions": self.predictions,
            "overall": self.overall,
            "known_at_cutoff": self.known_at_cutoff,
            "bins": [b.as_json() for b in self.bins],
            "train_s": round(self.train_s, 1),
            "walk_s": round(self.walk_s, 1),
            "rank_s": round(self.rank_s, 1),
        }


@dataclass
class _Predictions:
    """What each predicted event needs to be ranked, in stream order."""

    positions: list[int]
    ts_ms: list[int]
    targets: list[int]  # item index, -1 when the model does not know the item
    masked: list[np.ndarray]  # the user's earlier items
    live: list[UserItemMemory | None]
    frozen: list[UserItemMemory | None]


def run_prequential(
    bench: Benchmark,
    *,
    cutoff: float = 0.5,
    bins: int = 20,
    sample: int = 30_000,
    seed: int = 0,
    log: Log = print,
) -> PrequentialReport:
    """Train on the stream before ``cutoff``, then predict events after it before applying them."""
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"the cut-off is a fraction of the stream, in (0, 1): got {cutoff}")
    replay, _ = bench.split_last()
    lines = list(replay_lines(replay))
    cut = round(cutoff * len(lines))
    if not 0 < cut < len(lines):
        raise ValueError(f"{bench.name}: {len(lines)} events leave nothing on one side of the cut")
    events = [_parsed(line) for line in lines]
    log(f"{bench.name}: {len(lines):,} events, the model trains on the first {cut:,}")
    work = Path(tempfile.mkdtemp(prefix="profilestream-prequential-"))
    try:
        started = time.perf_counter()
        model, _ = train(histories_from_events(lines[:cut]), bench.attributes or None, work)
        train_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"trained item model {model.version} in {train_s:.1f} s: {model.n_items:,} items")

    started = time.perf_counter()
    chosen = np.arange(cut, len(lines))
    if len(chosen) > sample:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, sample, replace=False))
    predictions = _walk(model, events, cut, set(chosen.tolist()))
    walk_s = time.perf_counter() - started
    log(f"walked the stream in {walk_s:.1f} s, {len(predictions.targets):,} predictions")

    started = time.perf_counter()
    targets = np.array(predictions.targets, np.int64)
    no_memory: list[UserItemMemory | None] = [None] * len(targets)
    ranks = {
        "live": _ranks(model, predictions.live, targets, predictions.masked),
        "frozen": _ranks(model, predictions.frozen, targets, predictions.masked),
        "popularity": _ranks(model, no_memory, targets, predictions.masked),
    }
    rank_s = time.perf_counter() - started
    log(f"ranked three ways in {rank_s:.1f} s")

    known = np.array([m is not None for m in predictions.frozen])
    n_bins = min(bins, len(targets))
    report_bins = [
        PrequentialBin(
            predictions.ts_ms[rows[0]],
            predictions.ts_ms[rows[-1]],
            predictions.positions[rows[0]],
            predictions.positions[rows[-1]],
            len(rows),
            _metrics(ranks, rows),
        )
        for rows in np.array_split(np.arange(len(targets)), n_bins)
    ]
    return PrequentialReport(
        dataset=bench.name,
        model_version=model.version,
        events=len(lines),
        cutoff=cutoff,
        cutoff_position=cut,
        cutoff_ts_ms=events[cut].ts_ms,
        first_ts_ms=events[0].ts_ms,
        last_ts_ms=events[-1].ts_ms,
        after_cutoff=len(lines) - cut,
        predictions=len(targets),
        bins=report_bins,
        overall=_metrics(ranks, np.arange(len(targets))),
        known_at_cutoff={"n": int(known.sum()), **_metrics(ranks, np.flatnonzero(known))},
        train_s=train_s,
        walk_s=walk_s,
        rank_s=rank_s,
    )


def _parsed(line: bytes) -> Event:
    """The event the dataflow reads from a replay line (which is always valid)."""
    event = parse_event(line)
    if not isinstance(event, Event):
        raise ValueError(f"a replayed event was rejected ({event.reason}): {event.error}")
    return event


def _walk(model: ItemModel, events: list[Event], cut: int, chosen: set[int]) -> _Predictions:
    """Apply the events in order; snapshot what the chosen ones are predicted from."""
    out = _Predictions([], [], [], [], [], [])
    live: dict[str, UserItemMemory] = {}
    frozen: dict[str, UserItemMemory] = {}
    seen: dict[str, list[int]] = {}
    for position, event in enumerate(events):
        if position == cut:
            frozen = dict(live)  # memories are never modified in place: a shallow copy holds
        if event.item_id is None:
            continue
        user = event.user_id
        if position in chosen:
            out.positions.append(position)
            out.ts_ms.append(event.ts_ms)
            out.targets.append(model.index.get(event.item_id, -1))
            out.masked.append(np.array(seen.get(user, []), np.int64))
            out.live.append(live.get(user))
            out.frozen.append(frozen.get(user))
        live[user] = update_memory(live.get(user), model, event.item_id, event.type, event.ts_ms)
        if event.item_id in model.index:
            seen.setdefault(user, []).append(model.index[event.item_id])
    return out


def _ranks(
    model: ItemModel,
    memories: list[UserItemMemory | None],
    targets: np.ndarray,
    masked: list[np.ndarray],
    chunk: int = 1024,
) -> np.ndarray:
    """Rank of each target among all items as the system serves them (cold start included)."""
    ranks = np.full(len(targets), UNRANKED, np.int64)
    known = np.flatnonzero(targets >= 0)
    popular = cold_start_scores(model)
    for start in range(0, len(known), chunk):
        rows = known[start : start + chunk]
        block = [memories[r] for r in rows]
        warm = [i for i, m in enumerate(block) if not is_cold(model, m)]
        scores = np.tile(popular, (len(rows), 1))
        if warm:
            scores[warm] = score_users(model, [block[i] for i in warm])
        ranks[rows] = target_ranks(scores, targets[rows], [masked[r] for r in rows])
    return ranks


def _metrics(ranks: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    out = {}
    for variant in VARIANTS:
        m = hit_rate_and_ndcg(ranks[variant][rows], ks=(K,))
        out[f"hr{K}_{variant}"] = m[f"HR@{K}"]
        out[f"ndcg{K}_{variant}"] = m[f"NDCG@{K}"]
    return out


def _when(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


LABELS = {
    "live": "live profile, updated at every event",
    "frozen": "profile frozen at the cut-off",
    "popularity": "popularity",
}
COLOURS = {"live": "tab:blue", "frozen": "tab:orange", "popularity": "tab:gray"}


def write_plot(report: PrequentialReport, path: Path) -> None:
    """HR@20 over time of the three variants, as a 1200x600 PNG (no display needed)."""
    fig = Figure(figsize=(12, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    bins = report.bins

    def x(ts_ms: int, position: int) -> Any:
        return _when(ts_ms) if report.timed else position

    # Each bin's value holds from its first prediction to the next bin's (a step).
    edges = [x(b.start_ts_ms, b.start_position) for b in bins]
    edges.append(x(bins[-1].end_ts_ms, bins[-1].end_position))
    cut = x(report.cutoff_ts_ms, report.cutoff_position)
    # At most as long before the cut-off as after it: a few stray early timestamps (Taobao
    # has some) would otherwise squash the part that matters.
    start = max(x(report.first_ts_ms, 0), cut - (edges[-1] - cut))
    ax.axvspan(start, cut, color="0.92", label="events the model trained on")
    ax.axvline(cut, color="black", linestyle="--", linewidth=1, label="cut-off")
    known = report.known_at_cutoff
    for variant in VARIANTS:
        key = f"hr{K}_{variant}"
        values = [b.metrics[key] for b in bins]
        label = f"{LABELS[variant]}: {report.overall[key]:.3f}"
        if variant == "frozen":
            label += f" ({known[key]:.3f} on the {known['n']:,} predictions for users it knew)"
        ax.plot(
            edges,
            [*values, values[-1]],
            drawstyle="steps-post",
            color=COLOURS[variant],
            linewidth=2,
            label=label,
        )
    ax.set_xlim(start, edges[-1])
    ax.set_ylim(0, None)
    if report.timed:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_xlabel("event time")
    else:
        ax.set_xlabel("stream position")
    ax.set_ylabel(f"HR@{K}")
    ax.set_title(
        f"{report.dataset}: HR@{K} of each next item, predicted before the event is applied\n"
        f"{report.predictions:,} predictions after the cut-off at {report.cutoff:.0%} of "
        f"{report.events:,} events, in {len(bins)} bins of equal size"
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2)
    fig.savefig(path)
