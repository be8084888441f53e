"""The HTTP API: routes, responses and problems, over a store and an item model."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
from prometheus_client import (
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dataflow.serve.feeder import Feeder
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.models import ItemModels, recommend_for
from dataflow.serve.openapi import openapi
from dataflow.serve.schemas import Health, Problem, SegmentSize
from dataflow.serve.store import (
    ProfileStore,
    decode_profile,
)

log = logging.getLogger(__name__)
disable_created_metrics()

ENV_PREFIX = "PROFILESTREAM_"
#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000
MAX_K = 100


# -- HTTP ------------------------------------------------------------------------------------


_json = msgspec.json.Encoder()


def _response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


def _problem(status: int, detail: str) -> Response:
    return _response(Problem(detail), status)


class _Timed:
    """Observe each request's latency under its route's template (pure ASGI: no overhead
    of Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.histogram.labels(label).observe(time.perf_counter() - started)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on", "")


def build_app(
    store: ProfileStore,
    metrics: ServeMetrics,
    feeder: Feeder | None = None,
    models: ItemModels | None = None,
) -> ASGIApp:
    """The HTTP API over ``store``; its lifespan starts and stops ``feeder`` and ``models``."""

    async def user(request: Request) -> Response:
        uid = request.path_params["user_id"]
        doc = await store.fetch_json(uid, interest=_flag(request.query_params.get("interest")))
        if doc is None:
            return _problem(404, f"no profile for user {uid!r}")
        return Response(doc, media_type="application/json")

    async def recommendations(request: Request) -> Response:
        uid = request.path_params["user_id"]
        try:
            k = int(request.query_params.get("k", "10"))
        except ValueError:
            return _problem(422, "k must be an integer")
        if not 1 <= k <= MAX_K:
            return _problem(422, f"k must be between 1 and {MAX_K}")
        served = models.served if models is not None else None
        if served is None:
            return _problem(503, "no item model is loaded (give --item-model-dir)")
        doc = await store.fetch_json(uid, interest=True)
        profile = None if doc is None else decode_profile(doc)
        result = await run_in_threadpool(recommend_for, served, uid, profile, k)
        return _response(result)

    async def segment_size(request: Request) -> Response:
        name = request.path_params["name"]
        return _response(SegmentSize(name, store.segment_size(name)))

    async def segments(request: Request) -> Response:
        sizes = store.segment_sizes()
        return _response([SegmentSize(name, size) for name, size in sizes.items()])

    async def healthz(request: Request) -> Response:
        health = health_of(store, feeder, models)
        return _response(health, 503 if health.status == "down" else 200)

    async def prometheus(request: Request) -> Response:
        text = generate_latest(metrics.registry)
        if feeder is not None:
            text += feeder.exposition()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    spec = _json.encode(openapi())

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if models is not None:
            models.start()
        if feeder is not None:
            feeder.start()
        yield
        if feeder is not None:
            feeder.stop()
        if models is not None:
            models.stop()
        await store.aclose()

    app = Starlette(
        routes=[
            Route("/users/{user_id}", user),
            Route("/users/{user_id}/recommendations", recommendations),
            Route("/segments", segments),
            Route("/segments/{name}/size", segment_size),
            Route("/healthz", healthz),
            Route("/metrics", prometheus),
            Route("/openapi.json", openapi_json),
        ],
        lifespan=lifespan,
    )
    return _Timed(app, metrics.request_seconds)


def health_of(store: ProfileStore, feeder: Feeder | None, models: ItemModels | None) -> Health:
    consumer = feeder.status() if feeder is not None else None
    try:
        users: int | None = store.size()
        error = None
    except Exception as exc:
        users, error = None, f"store: {type(exc).__name__}: {exc}"
    status: Literal["ok", "starting", "down"] = "ok"
    if error is not None or (consumer is not None and not consumer.running):
        status = "down"
        error = error or (consumer.error if consumer else None) or "the consumer is not running"
    elif consumer is not None and consumer.error is not None:
        status, error = "down", consumer.error
    elif consumer is not None and not consumer.caught_up:
        status = "starting"
    served = models.served if models is not None else None
    version = served.model.version if served is not None else None
    return Health(status, store.kind, users, consumer, version, error)
