"""``profilestream serve``: profiles, segment sizes and recommendations over HTTP, in milliseconds.

Downstream services want a user's profile now, not a topic to replay. ``serve`` consumes the
deltas topic (and the segments topic), keeps every user's newest profile in a
:class:`~dataflow.serve.store.ProfileStore` -- an embedded SQLite file by default, Redis to
share one store between replicas -- and answers HTTP:

=====================================  ===================================================
``GET /users/{id}``                    the profile: fields (windows and segments included),
                                       version, incarnation; ``?interest=true`` adds the
                                       vector (base64 of little-endian float16, as in deltas)
``GET /users/{id}/recommendations``    top ``?k=`` (1-100, default 10) items of the item model
                                       in ``--item-model-dir`` (hot-reloaded), skipping the
                                       user's recent items; popularity for unknown users
``GET /users/{id}/export``             everything held about the user (access requests);
                                       every read is logged
``GET /segments/{name}/size``          members of a segment (``GET /segments``: all of them)
``GET /openapi.json``                  the API's OpenAPI 3.1 description
=====================================  ===================================================

A user id is one percent-encoded path segment (``team%2Falice``). Every route but the
description needs ``Authorization: Bearer <key>`` with its scope (:mod:`dataflow.serve.auth`);
every error is a JSON ``{"detail": ...}``. Health and metrics answer on a port of their own
(``--serve-ops-port``), with no profile data: ``/healthz`` (503 when the consumer died or the
store is unreachable: restart me), ``/readyz`` (200 only once the store has caught up with
the topics), ``/metrics`` (request latency by route and status, store size, consumer lag,
deltas applied / stale / gap / invalid, delta delay).

The consumer runs in a child process of its own (decoding and applying deltas would
otherwise take turns with requests for the GIL); the API process only reads the store.
How it stays correct across restarts: records are applied in batches, each batch and the
Kafka offsets after it in one store transaction (SQLite, or Redis ``MULTI``/``EXEC``), and a
(re)starting consumer seeks every partition to the offsets the store holds. Offsets are
committed to the Kafka consumer group only afterwards, for lag dashboards; the store's own
offsets are what a restart resumes from, so a store that lost its last writes (Redis without
``appendfsync always``, SQLite ``synchronous=NORMAL`` after a power cut) re-reads exactly what
it lost. The consumer group is named after the store (``profilestream-serve-<store id>``):
with SQLite every replica has its own file and reads every partition; replicas sharing a
Redis share the group and split the partitions (``--serve-assignment``), or run one consumer
and any number of ``--no-serve-consume`` readers.
"""

from dataflow.serve.app import ServeApps, build_app, health_of
from dataflow.serve.openapi import openapi
from dataflow.serve.service import make_service, serve

__all__ = ["ServeApps", "build_app", "health_of", "make_service", "openapi", "serve"]
