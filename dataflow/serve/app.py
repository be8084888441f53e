"""The HTTP API: routes, responses and problems, over a store and an item model."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote

import msgspec
from prometheus_client import (
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from dataflow.serve.auth import KeyRing, Scope, Verdict
from dataflow.serve.feeder import Feeder
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.models import ItemModels, recommend_for
from dataflow.serve.openapi import openapi
from dataflow.serve.schemas import MAX_K, Health, Problem, SegmentSize
from dataflow.serve.store import (
    ProfileStore,
    decode_profile,
)
from operators.apps.segments import RFM_PREFIX

log = logging.getLogger(__name__)
disable_created_metrics()

_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
#: A user id as long as the input contract allows, percent-encoded at worst.
_MAX_ID_BYTES = 3 * 256


# -- HTTP ------------------------------------------------------------------------------------


_json = msgspec.json.Encoder()


def _response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status, headers, media_type="application/json")


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return _response(Problem(detail), status, headers)


class _Timed:
    """Observe each request's latency and status under its route's template (pure ASGI:
    no overhead of Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = scope.get("profilestream.route") or getattr(scope.get("route"), "path", None)
            self.histogram.labels(label or "unmatched", str(status[0])).observe(
                time.perf_counter() - started
            )


class _Authorized:
    """Let a request through only with a key that has its route's scope (pure ASGI)."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        needed = _scope_of(scope.get("path", "")) if scope["type"] == "http" else None
        if needed is None:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        verdict, key_id = self.keys.verdict(header, needed)
        if verdict is Verdict.OK:
            scope["profilestream.key"] = key_id
            await self.app(scope, receive, send)
            return
        scope["profilestream.route"] = _REFUSED_ROUTE[needed]  # counted under its route
        if verdict is Verdict.FORBIDDEN:
            response = _problem(403, f"this key may not use {needed.value}")
        else:
            challenge = {"WWW-Authenticate": 'Bearer realm="profilestream"'}
            response = _problem(401, "a valid API key is needed (Authorization: Bearer)", challenge)
        await response(scope, receive, send)


#: The route a refused request is counted under, by the scope it lacked.
_REFUSED_ROUTE = {
    Scope.PROFILES: "/users/{user_id}",
    Scope.RECOMMENDATIONS: "/users/{user_id}/recommendations",
    Scope.PRIVACY: "/users/{user_id}/export",
    Scope.SEGMENTS: "/segments",
}


def _scope_of(path: str) -> Scope | None:
    """The scope a path needs; ``None`` for the public ones (the API description)."""
    if path.startswith("/users/"):
        if path.endswith("/recommendations"):
            return Scope.RECOMMENDATIONS
        if path.endswith("/export"):
            return Scope.PRIVACY
        return Scope.PROFILES
    if path == "/segments" or path.startswith("/segments/"):
        return Scope.SEGMENTS
    return None


def _user_path(raw_path: bytes) -> tuple[str, str] | None:
    """``(user id, what)`` of ``/users/<id>[/recommendations|/export]``, the id one
    percent-encoded segment (so an id may hold a ``/``, sent as ``%2F``); ``None`` if the
    path is not one of these."""
    parts = raw_path.split(b"/")
    if len(parts) not in (3, 4) or parts[1] != b"users" or not parts[2]:
        return None
    if len(parts[2]) > _MAX_ID_BYTES:
        return None
    what = parts[3].decode("latin-1") if len(parts) == 4 else "profile"
    if what not in ("profile", "recommendations", "export"):
        return None
    try:
        return unquote(parts[2].decode("ascii"), errors="strict"), what
    except (UnicodeDecodeError, ValueError):
        return None


def _flag(value: str | None) -> bool | None:
    """A boolean query parameter: absent is false; ``None`` for a value that is neither."""
    if value is None:
        return False
    value = value.lower()
    return True if value in _TRUE else False if value in _FALSE else None


class ServeApps(NamedTuple):
    """The API (profile data, behind keys when there are keys) and the operations app
    (health, readiness, metrics: no profile data), served on two ports."""

    api: ASGIApp
    ops: ASGIApp


def build_app(
    store: ProfileStore,
    metrics: ServeMetrics,
    feeder: Feeder | None = None,
    models: ItemModels | None = None,
    *,
    keys: KeyRing | None = None,
    segments: frozenset[str] = frozenset(),
) -> ServeApps:
    """The HTTP apps over ``store``; the API's lifespan starts and stops ``feeder`` and
    ``models``. ``keys``: the API keys (``None``: no authentication, for loopback use and
    tests); ``segments``: the defined segment names (listed even with no members)."""

    async def users(request: Request) -> Response:
        found = _user_path(request.scope.get("raw_path") or request.url.path.encode())
        if found is None:
            return _problem(404, "no such route: a user id with '/' is sent as %2F")
        uid, what = found
        request.scope["profilestream.route"] = {
            "profile": "/users/{user_id}",
            "recommendations": "/users/{user_id}/recommendations",
            "export": "/users/{user_id}/export",
        }[what]
        if what == "recommendations":
            return await recommendations(request, uid)
        if what == "export":
            return await export(request, uid)
        interest = _flag(request.query_params.get("interest"))
        if interest is None:
            return _problem(422, "interest must be true or false")
        doc = await store.fetch_json(uid, interest=interest)
        if doc is None:
            return _problem(404, "no profile for this user")
        return Response(doc, media_type="application/json")

    async def recommendations(request: Request, uid: str) -> Response:
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

    async def export(request: Request, uid: str) -> Response:
        doc = await store.fetch_json(uid, interest=True)
        log.warning(  # an access request's read is an audit record
            "export of user %r by key %r: %s",
            uid,
            request.scope.get("profilestream.key"),
            "found" if doc is not None else "nothing held",
        )
        if doc is None:
            return _problem(404, "nothing is held about this user")
        return Response(doc, media_type="application/json")

    async def segment_size(request: Request) -> Response:
        name = request.path_params["name"]
        if segments and name not in segments and not name.startswith(RFM_PREFIX):
            return _problem(404, "no such segment is defined")
        return _response(SegmentSize(name, store.segment_size(name)))

    async def segment_list(request: Request) -> Response:
        sizes = {name: 0 for name in segments} | store.segment_sizes()
        return _response([SegmentSize(name, size) for name, size in sorted(sizes.items())])

    spec = _json.encode(openapi())

    async def openapi_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def healthz(request: Request) -> Response:
        health = health_of(store, feeder, models)
        return _response(health, 503 if health.status == "down" else 200)

    async def readyz(request: Request) -> Response:
        health = health_of(store, feeder, models)
        return _response(health, 200 if health.status == "ok" else 503)

    async def prometheus(request: Request) -> Response:
        text = generate_latest(metrics.registry)
        if feeder is not None:
            text += feeder.exposition()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

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

    handlers = _problem_handlers()
    api = Starlette(
        routes=[
            Route("/users/{rest:path}", users),
            Route("/segments", segment_list),
            Route("/segments/{name}/size", segment_size),
            Route("/openapi.json", openapi_json),
        ],
        lifespan=lifespan,
        exception_handlers=handlers,
    )
    ops = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", prometheus),
        ],
        exception_handlers=handlers,
    )
    # Refused requests (401, 403) are timed and counted too: error rates need them.
    guarded = api if keys is None else _Authorized(api, keys)
    return ServeApps(_Timed(guarded, metrics.request_seconds), ops)


def _problem_handlers() -> dict[Any, Any]:
    """Routing and protocol errors as the API's JSON problems, like every other error."""

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = {404: "no such route", 405: "method not allowed"}.get(status, "bad request")
        return _problem(status, detail)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("request failed: %s", request.url.path)
        return _problem(500, "internal error")

    return {HTTPException: http_error, Exception: server_error}


def health_of(store: ProfileStore, feeder: Feeder | None, models: ItemModels | None) -> Health:
    consumer = feeder.status() if feeder is not None else None
    try:
        users: int | None = store.size()
        error = None
    except Exception as exc:
        users, error = None, f"store: {type(exc).__name__}: {exc}"
    status: Literal["ok", "starting", "unreachable", "down"] = "ok"
    if error is not None or (consumer is not None and not consumer.running):
        status = "down"
        error = error or (consumer.error if consumer else None) or "the consumer is not running"
    elif consumer is not None and consumer.error is not None:
        status, error = "down", consumer.error
    elif consumer is not None and not consumer.caught_up:
        status = "starting"
    elif consumer is not None and not consumer.broker_reachable:
        status = "unreachable"
        silent = consumer.broker_silent_s
        error = f"no broker has answered for {silent:.0f} s" if silent else "no broker answers"
    served = models.served if models is not None else None
    version = served.model.version if served is not None else None
    return Health(status, store.kind, users, consumer, version, error)
