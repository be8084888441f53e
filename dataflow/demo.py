"""``profilestream demo``: generate events, run the real dataflow on them, show what came out.

It is the README's first command, so it exercises the whole path a production deployment
takes, minus Kafka: synthetic events (:mod:`dataflow.sim`) in a JSONL file, the real
dataflow with the file source and file sinks (:func:`dataflow.runner.run_flow`), and the consumer
side, :func:`operators.profile.deltas.materialize`, rebuilding profiles from ``deltas.jsonl``. The
summary shows throughput, deltas by kind with their size and latency, dead letters by reason
(checked against the reasons the generator planted) and three sample profiles (affinities,
keywords, sentiment, the last day's window) with the catalog items nearest to their interest
vectors and the item model's recommendations (the model is trained on the generated log
first, as ``profilestream train`` would).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dataflow.config import Config, config_values
from dataflow.sim import (
    CATEGORIES,
    DEFAULT_CATALOG_ITEMS,
    AnomalyConfig,
    CatalogItem,
    GenerationSummary,
    build_catalog,
    generate_events,
    write_catalog,
    write_events,
)
from operators.profile import MaterializedProfile, delta_from_json, materialize, memory_from_fields
from operators.recsys import (
    CatalogEntry,
    ItemModel,
    embed_catalog,
    load_item_model,
    load_item_vectors,
    newest_version,
    recommend,
    save_item_vectors,
)

DEFAULT_OUT = Path("out/demo")
#: Output files a previous run leaves behind; removed first so every run starts clean.
OUTPUT_FILES = (
    "events.jsonl",
    "catalog.jsonl",
    "deltas.jsonl",
    "dead_letters.jsonl",
    "segments.jsonl",
    "alerts.jsonl",
    "demand.jsonl",
    "risk_scores.jsonl",
)


@dataclass(frozen=True)
class Neighbour:
    """A catalog item close to a user's interest vector."""

    item: CatalogItem
    cosine: float


@dataclass(frozen=True)
class ProfileSummary:
    """What the demo prints about one materialised profile."""

    user_id: str
    version: int
    counts: dict[str, int]
    spend: float
    refunded: float
    top_categories: list[tuple[str, float]]
    top_brands: list[tuple[str, float]]
    top_keywords: list[tuple[str, float]]
    sentiment: float
    opinions: float
    last_day: dict[str, Any]
    nearest: list[Neighbour]
    recommended: list[tuple[CatalogItem, float]]


@dataclass(frozen=True)
class DemoReport:
    """The numbers of one demo run."""

    output_dir: Path
    events_in: int
    users: int
    workers: int
    generate_seconds: float
    train_seconds: float
    model_seconds: float
    flow_seconds: float
    deltas_by_kind: Counter[str]
    delta_bytes: int
    events_in_deltas: int
    latency_ms: tuple[float, float]  # p50 and p99 of processed_ms - ingest_ms per delta
    dead_by_reason: Counter[str]
    expected_dead_by_reason: Counter[str]
    profiles_materialised: int
    #: By language of the user's top category: (users whose nearest catalog item is of that
    #: category, users with an interest vector) -- does the vector know what they shop for?
    nearest_agreement: dict[str, tuple[int, int]]
    profiles: list[ProfileSummary]
    applications: ApplicationSummary


@dataclass(frozen=True)
class ApplicationSummary:
    """What the segments, alerts and demand streams said in a run."""

    segment_sizes: dict[str, int]  # members at the end, replayed from entries and exits
    transitions: int
    sample_transitions: list[dict[str, Any]]
    alerts_by_kind: Counter[str]
    sample_alerts: list[dict[str, Any]]
    #: The busiest categories' last closed bucket: (category, bucket start, units, forecast
    #: of the next bucket, forecast of the next 24 buckets)
    demand: list[tuple[str, int, float, float, float]]


def summarise_applications(out: Path) -> ApplicationSummary:
    """Read ``segments.jsonl``, ``alerts.jsonl`` and ``demand.jsonl`` of a run."""
    decoder = msgspec.json.Decoder(dict[str, Any])

    def records(name: str) -> list[dict[str, Any]]:
        return [decoder.decode(line) for line in (out / name).read_bytes().splitlines()]

    transitions = records("segments.jsonl")
    members: dict[str, set[str]] = {}
    for change in transitions:
        group = members.setdefault(change["segment"], set())
        if change["direction"] == "enter":
            group.add(change["user_id"])
        else:
            group.discard(change["user_id"])
    alerts = records("alerts.jsonl")
    last: dict[str, dict[str, Any]] = {}
    for report in records("demand.jsonl"):
        last[report["category"]] = report
    busiest = sorted(last.values(), key=lambda r: -sum(r["forecast"]))[:4]
    return ApplicationSummary(
        segment_sizes={k: len(v) for k, v in sorted(members.items()) if v},
        transitions=len(transitions),
        sample_transitions=transitions[-4:],
        alerts_by_kind=Counter(a["kind"] for a in alerts),
        sample_alerts=list({a["kind"]: a for a in alerts}.values())[:4],  # one of each kind
        demand=[
            (
                r["category"],
                r["bucket_start_ms"],
                r["actual"]["units"],
                r["forecast"][0] if r["forecast"] else 0.0,
                sum(r["forecast"]),
            )
            for r in busiest
        ],
    )


def demo_config(args: argparse.Namespace) -> Config:
    """The :class:`Config` of a demo run: flags and ``PROFILESTREAM_*`` variables, with file
    source and sinks in ``--out``.

    >>> demo_config(argparse.Namespace(workers=2)).input_path
    PosixPath('out/demo/events.jsonl')
    """
    values = config_values(args)
    for name in ("source", "sink"):
        if values.pop(name, "file") != "file":
            raise ValueError(f"the demo runs with --{name} file; use `profilestream run` for Kafka")
    if values.pop("input_path", None) is not None:
        raise ValueError("the demo reads the events it generates; see `profilestream run`")
    out = Path(values.pop("output_dir", DEFAULT_OUT))
    return Config(
        **values, source="file", sink="file", input_path=out / "events.jsonl", output_dir=out
    )


def _clean(config: Config) -> None:
    config.output_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (config.output_dir / name).unlink(missing_ok=True)
    if config.item_model_dir is None:  # the item models an earlier demo trained
        shutil.rmtree(config.output_dir / "models", ignore_errors=True)
    if config.item_vectors_dir is None:
        shutil.rmtree(config.output_dir / "item-vectors", ignore_errors=True)
    # Only Bytewax's own files: the folder may be one the user pointed us at.
    if config.recovery_dir is not None and config.recovery_dir.is_dir():
        for part in config.recovery_dir.glob("part-*.sqlite3*"):
            part.unlink()


def _top(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:n]


def recommended_items(
    profile: MaterializedProfile, model: ItemModel, catalog: dict[str, CatalogItem], k: int = 5
) -> list[tuple[CatalogItem, float]]:
    """The item model's top ``k`` for a profile, skipping the items it has just seen."""
    memory = memory_from_fields(profile.fields)
    seen = {item for item, _, _ in memory.recent} if memory else set()
    ranked = recommend(
        model, memory, k, exclude=seen, category_affinity=profile.fields["category_affinity"]
    )
    return [(catalog[item], score) for item, score in ranked if item in catalog]


def summarise_profile(
    profile: MaterializedProfile,
    items: list[CatalogItem],
    vectors: np.ndarray,
    recommended: list[tuple[CatalogItem, float]],
    k: int = 5,
) -> ProfileSummary:
    fields_ = profile.fields
    norm = float(np.linalg.norm(profile.interest))
    nearest: list[Neighbour] = []
    if norm > 0 and len(items):
        cosines = vectors @ (profile.interest / norm)
        nearest = [Neighbour(items[i], float(cosines[i])) for i in np.argsort(-cosines)[:k]]
    return ProfileSummary(
        user_id=profile.user_id,
        version=profile.version,
        counts=dict(sorted(fields_["counts"].items(), key=lambda kv: kv[1], reverse=True)),
        spend=float(fields_["spend"]),
        refunded=float(fields_["refunded"]),
        top_categories=_top(fields_["category_affinity"], 3),
        top_brands=_top(fields_["brand_affinity"], 3),
        top_keywords=_top(fields_["keywords"], 5),
        sentiment=float(fields_["sentiment"]),
        opinions=float(fields_["sentiment_weight"]),
        last_day=fields_["windows"].get("24h", {}),
        nearest=nearest,
        recommended=recommended,
    )


def top_category(profile: MaterializedProfile) -> str | None:
    affinity = profile.fields["category_affinity"]
    return max(affinity, key=affinity.__getitem__) if affinity else None


def nearest_agreement(
    profiles: Iterable[MaterializedProfile], items: list[CatalogItem], vectors: np.ndarray
) -> dict[str, tuple[int, int]]:
    """How often a user's nearest catalog item (by interest vector) is of their top category,
    by the language of that category: ``{lang: (agreeing users, users with a vector)}``."""
    language = {c.name: c.lang for c in CATEGORIES}
    tally: dict[str, list[int]] = {}
    for profile in profiles:
        top = top_category(profile)
        if top is None or not np.any(profile.interest) or not len(items):
            continue
        nearest = items[int(np.argmax(vectors @ profile.interest))]
        counts = tally.setdefault(language.get(top, "?"), [0, 0])
        counts[0] += nearest.category == top
        counts[1] += 1
    return {lang: (agree, total) for lang, (agree, total) in sorted(tally.items())}


def _sample(profiles: dict[str, MaterializedProfile]) -> list[MaterializedProfile]:
    """Active users: the most active one, those at the top 1% and 5% marks, and the most
    active one whose top category is a Chinese one."""
    ranked = sorted(profiles.values(), key=lambda p: (-sum(p.fields["counts"].values()), p.user_id))
    picks = sorted({0, len(ranked) // 100, len(ranked) // 20} & set(range(len(ranked))))
    chosen = [ranked[i] for i in picks]
    chinese = {c.name for c in CATEGORIES if c.lang == "zh"}
    shopper = next((p for p in ranked if top_category(p) in chinese), None)
    if shopper is not None and shopper not in chosen:
        chosen.append(shopper)
    return chosen


def run_demo(
    config: Config,
    n_events: int,
    n_users: int,
    *,
    seed: int = 0,
    malformed_rate: float = 0.01,
    catalog_items: int = DEFAULT_CATALOG_ITEMS,
    log: Callable[[str], None] = print,
) -> DemoReport:
    """Generate the data into ``config.output_dir``, run the dataflow, and summarise the result."""
    from dataflow.eval.training import histories_from_events, train
    from dataflow.factories import shared_embedder
    from dataflow.runner import run_flow

    if config.input_path is None:
        raise ValueError("the demo needs config.input_path")
    _clean(config)
    out = config.output_dir
    log(f"generating {n_events:,} events for {n_users:,} users into {out}/ ...")
    started = time.perf_counter()
    catalog = build_catalog(catalog_items, np.random.default_rng(seed))
    write_catalog(out / "catalog.jsonl", catalog)
    generated = GenerationSummary()
    events = generate_events(
        n_events,
        n_users,
        seed=seed,
        malformed_rate=malformed_rate,
        catalog=catalog,
        anomalies=AnomalyConfig(),  # labelled fraud episodes, for the risk alerts to find
    )
    events_in = write_events(config.input_path, (generated.add(e) for e in events))
    generate_seconds = time.perf_counter() - started

    # In production the item model is trained on yesterday's log; here, on the generated one,
    # unless --item-model-dir names one.
    started = time.perf_counter()
    if config.item_model_dir is None:
        histories = histories_from_events(config.input_path.read_bytes().splitlines())
        item_model, folder = train(histories, None, out / "models")
        log(f"trained item model {folder.name} on {item_model.manifest['n_events']:,} events")
        config = config.replace(item_model_dir=out / "models")
    else:
        item_model = load_item_model(config.item_model_dir)
    train_seconds = time.perf_counter() - started

    # Load the model before the clock starts: the flow gets this very instance (lru_cache), so
    # the timed part is the stream itself. The catalog is embedded once, as `profilestream
    # embed-items` would, and served to the flow, unless --item-vectors-dir names vectors.
    started = time.perf_counter()
    model = shared_embedder(config)
    device = model.device  # the flow's model loads lazily: load it here, outside the clock
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if config.item_vectors_dir is None:
        entries = [CatalogEntry(i.item_id, i.title, i.category, i.brand) for i in catalog]
        vectors = embed_catalog(entries, model)
        save_item_vectors(vectors, out / "item-vectors")
        log(f"embedded {len(catalog):,} catalog items in {time.perf_counter() - started:.1f} s")
        config = config.replace(item_vectors_dir=out / "item-vectors")
    else:
        newest = newest_version(config.item_vectors_dir)
        if newest is None:
            raise ValueError(f"no item vectors in {config.item_vectors_dir}")
        vectors = load_item_vectors(newest)
    log(f"running the dataflow ({config.workers} worker(s), model on {device}) ...")
    started = time.perf_counter()
    run_flow(config)
    flow_seconds = time.perf_counter() - started

    delta_lines = (out / "deltas.jsonl").read_bytes().splitlines()
    parsed = [delta_from_json(line) for line in delta_lines]
    waited = [d.processed_ms - d.ingest_ms for d in parsed if d.ingest_ms]
    dead_decoder = msgspec.json.Decoder(dict[str, Any])
    dead_by_reason = Counter(
        str(dead_decoder.decode(line)["reason"])
        for line in (out / "dead_letters.jsonl").read_bytes().splitlines()
    )
    profiles = materialize(delta_lines)
    by_id = {item.item_id: item for item in catalog}
    items = [by_id[i] for i in vectors.item_ids if i in by_id]
    matrix = np.stack([vectors.vectors[vectors.index[i.item_id]] for i in items]).astype("f4")
    return DemoReport(
        output_dir=out,
        events_in=events_in,
        users=len(generated.users),
        workers=config.workers,
        generate_seconds=generate_seconds,
        train_seconds=train_seconds,
        model_seconds=model_seconds,
        flow_seconds=flow_seconds,
        deltas_by_kind=Counter(d.kind for d in parsed),
        delta_bytes=sum(len(line) + 1 for line in delta_lines),
        events_in_deltas=sum(len(d.event_ids) for d in parsed),
        latency_ms=(
            (float(np.percentile(waited, 50)), float(np.percentile(waited, 99)))
            if waited
            else (0.0, 0.0)
        ),
        dead_by_reason=dead_by_reason,
        expected_dead_by_reason=generated.malformed_by_reason,
        profiles_materialised=len(profiles),
        nearest_agreement=nearest_agreement(profiles.values(), items, matrix),
        profiles=[
            summarise_profile(p, items, matrix, recommended_items(p, item_model, by_id))
            for p in _sample(profiles)
        ],
        applications=summarise_applications(out),
    )


def _counts(counter: Counter[str] | dict[str, int]) -> str:
    pairs = counter.most_common() if isinstance(counter, Counter) else counter.items()
    return ", ".join(f"{name} {count:,}" for name, count in pairs)


def _scores(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {score:.2f}" for name, score in pairs) or "-"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _application_lines(apps: ApplicationSummary) -> list[str]:
    lines = [
        "",
        f"segments        {apps.transitions:,} entries and exits; members at the end: "
        + (", ".join(f"{k} {v:,}" for k, v in apps.segment_sizes.items()) or "-"),
    ]
    lines += [
        f"    {_when(t['event_time_ms'])}  {t['user_id']} {t['direction']}s {t['segment']}"
        + (f" (event {t['event_id']})" if t.get("event_id") else " (as time passed)")
        for t in apps.sample_transitions
    ]
    lines.append(f"risk alerts     {apps.alerts_by_kind.total():,}: {_counts(apps.alerts_by_kind)}")
    lines += [
        f"    {_when(a['event_time_ms'])}  {a['user_id']} {a['kind']} score {a['score']:.2f}: "
        + ", ".join(f"{k} {v}" for k, v in list(a["evidence"].items())[:4])
        for a in apps.sample_alerts
    ]
    lines.append("category demand last closed hour, units: actual, forecast next hour / next 24 h")
    lines += [
        f"    {category:<18} {_when(start)}  {units:,.0f}, {nxt:,.1f} / {day:,.0f}"
        for category, start, units, nxt, day in apps.demand
    ] or ["    (no bucket closed yet)"]
    return lines


def format_report(report: DemoReport) -> str:
    """The summary ``profilestream demo`` prints."""
    rate = report.events_in / report.flow_seconds if report.flow_seconds > 0 else float("nan")
    deltas, dead = report.deltas_by_kind.total(), report.dead_by_reason.total()
    # Every line is covered by exactly one delta or is one dead letter.
    covered = report.events_in_deltas + dead
    accounted = "every line accounted for" if covered == report.events_in else (
        f"MISMATCH: {covered:,} lines covered of {report.events_in:,}"
    )  # fmt: skip
    planted = (
        "as planted by the generator"
        if report.dead_by_reason == report.expected_dead_by_reason
        else f"generator planted: {_counts(report.expected_dead_by_reason)}"
    )
    per_event = report.delta_bytes / max(report.events_in, 1)
    lines = [
        "",
        f"events in       {report.events_in:,} lines from {report.users:,} users "
        f"(generated in {report.generate_seconds:.1f} s; item model trained in "
        f"{report.train_seconds:.1f} s; embedding model loaded in {report.model_seconds:.1f} s)",
        f"dataflow        {report.flow_seconds:.1f} s wall, {rate:,.0f} events/s, "
        f"{report.workers} worker(s)",
        f"deltas          {deltas:,} for {report.events_in_deltas:,} events "
        f"({deltas / max(report.events_in, 1):.2f} a line): {_counts(report.deltas_by_kind)}",
        f"                {report.delta_bytes / 1e6:.1f} MB, {per_event:,.0f} bytes a line, "
        f"{report.delta_bytes / max(deltas, 1):,.0f} a delta; event to delta p50 "
        f"{report.latency_ms[0]:,.0f} ms, p99 {report.latency_ms[1]:,.0f} ms",
        f"dead letters    {dead:,}: {_counts(report.dead_by_reason)}",
        f"                {planted}; {accounted}",
        f"profiles        {report.profiles_materialised:,} materialised from "
        f"{report.output_dir / 'deltas.jsonl'}",
        "interest vector nearest catalog item is of the user's top category: "
        + (
            ", ".join(
                f"{lang} {agree / total:.0%} of {total:,}"
                for lang, (agree, total) in report.nearest_agreement.items()
            )
            or "-"
        ),
    ]
    lines += _application_lines(report.applications)
    for p in report.profiles:
        lines += [
            "",
            f"user {p.user_id}: version {p.version:,}, spend {p.spend:,.2f}, "
            f"refunded {p.refunded:,.2f}",
            f"  counts          {_counts(p.counts)}",
            f"  top categories  {_scores(p.top_categories)}",
            f"  top brands      {_scores(p.top_brands)}",
            f"  top keywords    {_scores(p.top_keywords)}",
            f"  sentiment       {p.sentiment:+.2f} (mean of {p.opinions:.1f} weighted opinions)",
            f"  last 24 hours   {_counts(p.last_day.get('counts', {}))}; spend "
            f"{p.last_day.get('spend', 0.0):,.2f}; {p.last_day.get('items', 0)} items, "
            f"{p.last_day.get('sessions', 0)} sessions",
            "  nearest catalog items (cosine to the interest vector):",
        ]
        lines += [
            f"    {n.cosine:.3f}  {n.item.title}  [{n.item.category} / {n.item.brand}]"
            for n in p.nearest
        ] or ["    (no interest vector yet)"]
        lines.append("  recommended next (item model, recently seen items excluded):")
        lines += [
            f"    {score:.3f}  {item.title}  [{item.category} / {item.brand}]"
            for item, score in p.recommended
        ] or ["    (nothing to recommend)"]
    return "\n".join(lines)
