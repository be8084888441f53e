"""The API's OpenAPI 3.1 description, generated from the response types."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from prometheus_client import (
    disable_created_metrics,
)

from dataflow.serve.schemas import Health, Problem, Recommendations, SegmentSize
from dataflow.serve.store import (
    StoredProfile,
)

log = logging.getLogger(__name__)
disable_created_metrics()

ENV_PREFIX = "PROFILESTREAM_"
#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000
MAX_K = 100


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; schemas come from the response types themselves."""
    _, schemas = msgspec.json.schema_components(
        [StoredProfile, Recommendations, SegmentSize, Health, Problem],
        ref_template="#/components/schemas/{name}",
    )
    schemas["StoredProfile"]["description"] = (
        "A user's newest profile. `fields` holds the public profile fields of the deltas "
        "contract (counts, spend, affinities, keywords, windows, segments, rfm, item memory, "
        "...): see README, 'Profile delta'. `interest` (only with ?interest=true) is the "
        "interest vector as base64 of little-endian float16."
    )

    def body(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def param(name: str, where: str, schema: dict[str, Any], text: str = "") -> dict[str, Any]:
        return {"name": name, "in": where, "required": where == "path", "schema": schema} | (
            {"description": text} if text else {}
        )

    def get(op: str, summary: str, responses: dict[str, Any], *params: Any) -> dict[str, Any]:
        return {"get": {"operationId": op, "summary": summary, "parameters": list(params),
                        "responses": responses}}  # fmt: skip

    user = param("user_id", "path", {"type": "string"})
    problem = body("Problem", "error")
    interest = param("interest", "query", {"type": "boolean", "default": False}, "add the vector")
    k = param("k", "query", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10})
    text = {"description": "text format 0.0.4", "content": {"text/plain": {"schema": {}}}}
    paths = {
        "/users/{user_id}": get(
            "getUser", "A user's newest profile",
            {"200": body("StoredProfile", "the profile"), "404": problem}, user, interest,
        ),
        "/users/{user_id}/recommendations": get(
            "getRecommendations", "Top items for a user from the served item model",
            {"200": body("Recommendations", "best first"), "422": problem, "503": problem},
            user, k,
        ),
        "/segments": get(
            "listSegments", "Every segment seen, and its size",
            {"200": body({"type": "array", "items": {"$ref": "#/components/schemas/SegmentSize"}},
                         "sizes")},
        ),
        "/segments/{name}/size": get(
            "getSegmentSize", "How many users are in a segment now (0 for an unknown name)",
            {"200": body("SegmentSize", "the size")}, param("name", "path", {"type": "string"}),
        ),
        "/healthz": get(
            "health", "Store, consumer lag and item model",
            {"200": body("Health", "serving"), "503": body("Health", "store or consumer down")},
        ),
        "/metrics": get("metrics", "Prometheus metrics", {"200": text}),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilestream serve",
            "version": "1",
            "description": "Profiles, segment sizes and recommendations materialised from the "
            "profile deltas topic.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
