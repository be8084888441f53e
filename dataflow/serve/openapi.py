"""The API's OpenAPI 3.1 description, generated from the response types."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from prometheus_client import (
    disable_created_metrics,
)

from dataflow.serve.schemas import MAX_K, Problem, Recommendations, SegmentSize
from dataflow.serve.store import (
    StoredProfile,
)

log = logging.getLogger(__name__)
disable_created_metrics()


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; schemas come from the response types themselves."""
    _, schemas = msgspec.json.schema_components(
        [StoredProfile, Recommendations, SegmentSize, Problem],
        ref_template="#/components/schemas/{name}",
    )
    schemas["StoredProfile"]["description"] = (
        "A user's newest profile. `fields` holds the public profile fields of the deltas "
        "contract (counts, spend, affinities, keywords, windows, segments, rfm, item memory, "
        "...): see README, 'Profile delta'. `interest` (only with ?interest=true) is the "
        "interest vector as the deltas carry it (docs/contracts.md: `q8:` and int8 codes, or "
        "base64 of little-endian float16)."
    )

    def body(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def param(name: str, where: str, schema: dict[str, Any], text: str = "") -> dict[str, Any]:
        return {"name": name, "in": where, "required": where == "path", "schema": schema} | (
            {"description": text} if text else {}
        )

    def get(
        op: str, summary: str, scope: str, responses: dict[str, Any], *params: Any
    ) -> dict[str, Any]:
        denied = {"401": body("Problem", "no valid API key"),
                  "403": body("Problem", f"the key lacks {scope}")}  # fmt: skip
        return {"get": {"operationId": op, "summary": summary, "parameters": list(params),
                        "responses": responses | denied,
                        "security": [{"apiKey": [scope]}]}}  # fmt: skip

    user = param("user_id", "path", {"type": "string"}, "percent-encoded ('/' as %2F)")
    problem = body("Problem", "error")
    interest = param("interest", "query", {"type": "boolean", "default": False}, "add the vector")
    k = param("k", "query", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10})
    paths = {
        "/users/{user_id}": get(
            "getUser", "A user's newest profile", "profiles:read",
            {"200": body("StoredProfile", "the profile"), "404": problem, "422": problem},
            user, interest,
        ),
        "/users/{user_id}/recommendations": get(
            "getRecommendations", "Top items for a user from the served item model",
            "recommendations:read",
            {"200": body("Recommendations", "best first"), "422": problem, "503": problem},
            user, k,
        ),
        "/users/{user_id}/export": get(
            "exportUser", "Everything held about a user, vector included (access requests; "
            "every read is logged)", "privacy:admin",
            {"200": body("StoredProfile", "all of it"), "404": problem}, user,
        ),
        "/segments": get(
            "listSegments", "Every defined or seen segment, and its size", "segments:read",
            {"200": body({"type": "array", "items": {"$ref": "#/components/schemas/SegmentSize"}},
                         "sizes")},
        ),
        "/segments/{name}/size": get(
            "getSegmentSize", "How many users are in a segment now", "segments:read",
            {"200": body("SegmentSize", "the size"), "404": problem},
            param("name", "path", {"type": "string"}),
        ),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilestream serve",
            "version": "1",
            "description": "Profiles, segment sizes and recommendations materialised from the "
            "profile deltas topic. Every route but this description needs an API key with its "
            "scope. Health (/healthz, /readyz) and metrics (/metrics) answer on the operations "
            "port, not here.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
