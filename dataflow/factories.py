"""The flow's parts made from the one :class:`~dataflow.config.Config`: the shared model, the
profile and demand parameters, and the hot-reloaded segment book, item model, item vectors
and learned risk model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter, Gauge

from dataflow import metrics
from dataflow.clock import Clock, StepTime
from dataflow.config import Config
from dataflow.model_watch import ItemModelFeed, ModelWatcher
from dataflow.user_logic import UserContext
from operators.apps import (
    Applications,
    DemandParams,
    load_risk_params,
    takeover_scorer,
)
from operators.apps.risk_features import FEATURES
from operators.apps.risk_model import RiskModel, load_model
from operators.apps.segments import SegmentBook, load_segment_book
from operators.ingest.units import DAY_MS
from operators.profile import (
    ProfileParams,
    parse_windows,
)
from operators.recsys import ItemVectors, load_item_model, loader_for
from operators.text import SentimentScorer, load_sentiment_model
from operators.text.embedding import Embedder, TextBatcher, TextEncoder, usable_cores
from operators.user import MachineSettings, Ports

Loaded = TypeVar("Loaded")


def shared_embedder(config: Config) -> Embedder:
    """One model per process, shared by its worker threads, loaded when a text first needs it."""
    return _embedder(
        config.model_dir,
        config.embed_model,
        config.device,
        config.embed_precision,
        config.embed_threads or model_threads(config),
        config.embed_cache_size,
        config.embed_batch_size,
    )


def model_threads(config: Config) -> int | None:
    """The model's intra-op threads when not set: on its own thread it gets the cores the
    workers leave (running beside them, more would fight them for cores at every operator's
    barrier); on the workers' threads, ``None``: every core, as the workers wait meanwhile."""
    if config.embed_thread == "off":
        return None
    return max(1, usable_cores() - config.workers)


@lru_cache(maxsize=4)
def _embedder(
    model_dir: Path | None,
    model: str,
    device: str | None,
    precision: str,
    threads: int | None,
    cache_size: int,
    batch_size: int,
) -> Embedder:
    return Embedder(
        model_dir,
        model=model,
        device=device,
        precision=precision,
        threads=threads,
        cache_size=cache_size,
        batch_size=batch_size,
        lazy=True,  # events without text need no model: start on them meanwhile
    )


def profile_params(config: Config, model_name: str) -> ProfileParams:
    return ProfileParams(
        interest_half_life_ms=round(config.interest_half_life_days * DAY_MS),
        affinity_half_life_ms=round(config.affinity_half_life_days * DAY_MS),
        max_seen_event_ids=config.max_seen_event_ids,
        max_keywords=config.max_keywords,
        full_every=config.full_every,
        model_version=f"{model_name}+profile-v1",
        windows=parse_windows(config.windows),
        allowed_lateness_ms=config.allowed_lateness_ms,
        vector_encoding=config.vector_encoding,
    )


def risk_model(config: Config) -> Callable[[], RiskModel | None]:
    """The learned risk model the item step scores with now (``None``: log features only),
    reloaded when ``train-risk`` writes a new one."""
    if config.risk_model_path is None:
        return lambda: None
    return watched_file(
        config.risk_model_path,
        config.model_poll_s,
        lambda path: load_model(path, FEATURES),
        lambda model: model.version,
        metrics.RISK_MODEL_LOADS,
        metrics.RISK_MODEL_INFO,
    )


def demand_params(config: Config) -> DemandParams:
    return DemandParams(bucket_ms=config.demand_bucket_ms, horizon=config.demand_horizon)


def applications(config: Config, books: Callable[[], SegmentBook]) -> Callable[[], Applications]:
    """The applications' settings now (the segment book may be reloaded at any time)."""
    windows = parse_windows(config.windows)
    risk = load_risk_params(config.risk_rules_file)
    settle_ms = config.risk_settle_days * DAY_MS
    takeover = takeover_scorer(risk, config.takeover_model_path)
    current = Applications(books(), windows, risk, settle_ms, takeover)

    def now() -> Applications:
        nonlocal current
        book = books()
        if book is not current.segments:
            current = Applications(book, windows, risk, settle_ms, takeover)
        return current

    return now


def segment_book(config: Config) -> Callable[[], SegmentBook]:
    """The segment definitions in use now: the shipped ones, or a watched file."""
    windows = parse_windows(config.windows)
    if config.segments_file is None:
        book = load_segment_book(None, windows=windows)
        metrics.SEGMENT_DEFINITIONS_INFO.labels(book.version).set(1)
        return lambda: book
    return watched_file(
        config.segments_file,
        config.model_poll_s,
        lambda path: load_segment_book(path, windows=windows),
        lambda book: book.version,
        metrics.SEGMENT_DEFINITIONS_LOADS,
        metrics.SEGMENT_DEFINITIONS_INFO,
    )


def watched_file(
    path: Path,
    poll_interval_s: float,
    load: Callable[[Path], Loaded],
    version: Callable[[Loaded], str],
    loads: Counter,
    info: Gauge,
) -> Callable[[], Loaded]:
    """What ``path`` holds now: loaded at once (a file that does not load stops the start),
    then again whenever it changes, checked every ``poll_interval_s``. A change that fails
    to load is counted and skipped; the last good one stays in use. ``info`` shows the
    version in use."""
    errors: list[Exception] = []

    def failed(_path: Path, exc: Exception) -> None:
        loads.labels("error").inc()
        errors.append(exc)
        del errors[:-1]  # the latest says why

    watcher = ModelWatcher(
        path,
        poll_interval_s,
        load=load,
        on_load=lambda _path: loads.labels("ok").inc(),
        on_error=failed,
    )
    first = watcher.current()
    if first is None:
        raise ValueError(f"cannot load {path}: {errors[-1] if errors else 'not found'}")
    shown = first

    def current() -> Loaded:
        nonlocal shown
        loaded = watcher.current() or shown
        if loaded is not shown:
            info.clear()
            info.labels(version(loaded)).set(1)
            shown = loaded
        return loaded

    info.clear()  # the version in use, and only it
    info.labels(version(first)).set(1)
    return current


def item_model_feed(config: Config) -> ItemModelFeed | None:
    """The hot-reloaded item model of ``config.item_model_dir`` (``None`` when unset)."""
    if config.item_model_dir is None:
        return None
    watcher = ModelWatcher(
        config.item_model_dir,
        config.model_poll_s,
        load=load_item_model,
        on_load=metrics.ITEM_MODEL_VERSIONS.loaded,
        on_error=metrics.ITEM_MODEL_VERSIONS.failed,
    )
    return ItemModelFeed(watcher, on_weights=metrics.type_weights_changed)


def item_vectors(config: Config, model: TextEncoder) -> ModelWatcher[ItemVectors] | None:
    """The hot-reloaded catalog vectors of ``config.item_vectors_dir`` (``None`` when unset)."""
    if config.item_vectors_dir is None:
        return None
    return ModelWatcher(
        config.item_vectors_dir,
        config.model_poll_s,
        load=loader_for(model),
        on_load=metrics.ITEM_VECTOR_VERSIONS.loaded,
        on_error=metrics.ITEM_VECTOR_VERSIONS.failed,
    )


def machine_settings(
    config: Config, model_name: str, dim: int, prompts: Mapping[str, str]
) -> MachineSettings:
    """What every user's machine shares, from ``config`` and the text model's name, vector
    size and prompts (``benchmarks/machine_bench.py`` builds its machines with it too)."""
    return MachineSettings(
        params=profile_params(config, model_name),
        applications=applications(config, segment_book(config)),
        dim=dim,
        emit_interval_ms=config.emit_interval_ms,
        keywords_per_text=config.keywords_per_text,
        expire_after_ms=round(config.expire_after_days * DAY_MS),
        erased_memory_ms=round(config.erased_memory_days * DAY_MS),
        settle_full_ms=round(config.settle_full_after_s * 1000),
        prompts=prompts,
    )


def user_context(
    config: Config,
    encoder: TextEncoder | None,
    sentiment: SentimentScorer | None,
    clock: Clock,
    time: StepTime,
) -> UserContext:
    """What every user's machine on a process shares: the settings, and the ports to the
    model (``encoder``: the configured one if ``None``) behind a batcher, the sentiment
    model, the catalog, the item model and the metrics; and the clocks."""
    model = encoder or shared_embedder(config)
    if sentiment is None:
        sentiment = load_sentiment_model(config.sentiment_model)
    head = getattr(sentiment, "embedding", None)
    if head is not None and not head.reads(model.name):
        raise ValueError(
            f"the sentiment model's embedding head reads {head.model} vectors, but the flow "
            f"embeds with {model.name}: train it again with the flow's model"
        )
    batcher = TextBatcher(
        model,
        config.embed_batch_size,
        config.embed_max_wait_ms,
        metrics.observe_batch,
        background=config.embed_thread == "on",
    )
    settings = machine_settings(config, model.name, model.dim, model.prompts)
    ports = Ports(
        vectors=batcher,
        sentiment=sentiment,
        catalog=item_vectors(config, model),
        feed=item_model_feed(config),
        observer=metrics.UserMetrics(),
    )
    return UserContext(settings, ports, batcher, clock, time)
