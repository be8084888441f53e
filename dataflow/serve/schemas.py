"""The bodies the API answers with, as msgspec types: the routes encode them and the
OpenAPI description is generated from them."""

from __future__ import annotations

from typing import Literal

import msgspec

from dataflow.serve.feeder import ConsumerStatus

#: The most recommendations one request may ask for.
MAX_K = 100


class RecommendedItem(msgspec.Struct):
    item_id: str
    score: float


class Recommendations(msgspec.Struct):
    """A user's top items from the served item model, best first (the user's own recent
    items excluded). ``cold`` is true when the model knows none of the user's items (or the
    user has no profile): the items are then popular ones, within their categories if known."""

    user_id: str
    model_version: str
    profile_version: int | None
    cold: bool
    items: list[RecommendedItem]


class SegmentSize(msgspec.Struct):
    segment: str
    size: int


class Health(msgspec.Struct):
    """``status``: ``ok``; ``starting`` until the consumer has caught up once;
    ``unreachable`` while no broker has answered for 10 s (the store may be falling behind
    unseen); ``down`` when the store does not answer or the consumer has stopped.
    ``/readyz`` is 200 only when ``ok``; ``/healthz`` is 503 (restart me) only when ``down``."""

    status: Literal["ok", "starting", "unreachable", "down"]
    store: str
    users: int | None
    consumer: ConsumerStatus | None
    item_model: str | None
    error: str | None = None


class Problem(msgspec.Struct):
    detail: str
