"""Who may read what from ``serve``, and what every other request gets: API keys with scopes
(missing, wrong, expired, revoked, out of scope), a fuzzed ``Authorization`` header, health
and metrics on their own port, user ids with ``/``, and JSON problems for every error."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataflow.config import Config
from dataflow.serve import build_app
from dataflow.serve.auth import KeyRing, Scope, new_key, read_keys, write_keys
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.service import access_keys
from dataflow.serve.store import Batch, SqliteStore
from operators.apps.segments import SegmentTransition
from operators.profile import ProfileDelta, encode_vector
from tests.integration.test_serve import running_app

T0 = 1_700_000_000_000
#: User ids the input contract accepts that a URL must carry encoded.
ODD_IDS = ("team/alice", "a b", "100%", "q?x=1#y", "用户/张", "..", "a/b/recommendations")
ROUTES = {
    "/users/u1": Scope.PROFILES,
    "/users/u1/recommendations": Scope.RECOMMENDATIONS,
    "/users/u1/export": Scope.PRIVACY,
    "/segments": Scope.SEGMENTS,
    "/segments/vip/size": Scope.SEGMENTS,
}


def request(url: str, token: str | None = None, method: str = "GET") -> tuple[int, Any, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            body, status, info = response.read(), response.status, response.headers
    except urllib.error.HTTPError as err:
        body, status, info = err.read(), err.code, err.headers
    kind = info.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body, info


def delta(user: str) -> ProfileDelta:
    return ProfileDelta(
        user, 1, "full", f"{user}-1", T0, ["e1"], "m",
        changed={"spend": 12.5, "segments": {"vip": 1}},
        interest=encode_vector(np.full(4, 0.5, np.float16)),
    )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A key file: one key per scope, one with all, an expired and a revoked one."""
    secrets, entries = {}, []
    for scope in Scope:
        secrets[scope.value], key = new_key(scope.value, frozenset({scope}))
        entries.append(key)
    secrets["all"], key = new_key("all", frozenset(Scope))
    entries.append(key)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    secrets["expired"], key = new_key("expired", frozenset(Scope), yesterday)
    entries.append(key)
    secrets["revoked"], key = new_key("revoked", frozenset(Scope))
    entries.append(key.__class__(key.id, key.sha256, key.scopes, None, revoked=True))
    path = tmp_path / "keys.json"
    write_keys(path, entries)
    return path, secrets


@pytest.fixture
def served(tmp_path: Path, keys: tuple[Path, dict[str, str]]) -> Iterator[tuple[str, str]]:
    store = SqliteStore(tmp_path / "p.db")
    users = ["u1", *ODD_IDS]
    entries = [SegmentTransition(f"t-{u}", u, "vip", "enter", T0, "e1", 1, "v") for u in users]
    store.apply(Batch([*(delta(u) for u in users), *entries]))
    apps = build_app(
        store,
        ServeMetrics(store),
        keys=KeyRing(keys[0], poll_s=0),
        segments=frozenset({"vip", "lapsing"}),
    )
    with running_app(apps.api) as api, running_app(apps.ops) as ops:
        yield api, ops
    store.close()


def test_every_route_needs_a_valid_key_with_its_scope(
    served: tuple[str, str], keys: tuple[Path, dict[str, str]]
) -> None:
    api, ops = served
    secrets = keys[1]
    for route, scope in ROUTES.items():
        for token in (None, "wrong", secrets["expired"], secrets["revoked"]):
            status, body, headers = request(api + route, token)
            assert status == 401, (route, token)
            assert body == {"detail": "a valid API key is needed (Authorization: Bearer)"}
            assert headers["WWW-Authenticate"].startswith("Bearer")
        other = next(s for s in Scope if s is not scope)
        status, body, _ = request(api + route, secrets[other.value])
        assert (status, list(body)) == (403, ["detail"]), route  # no profile data
        status, body, _ = request(api + route, secrets[scope.value])
        assert status != 401 and status != 403, route
    assert request(api + "/users/u1", secrets["all"])[1]["fields"]["spend"] == 12.5
    assert request(api + "/openapi.json")[0] == 200  # the description is public
    # Refusals count in the request metrics like any answer: error rates need them.
    exposition = request(ops + "/metrics")[1].decode()
    for route, status, times in [("/users/{user_id}", 401, 4), ("/segments", 403, 2)]:
        series = f'profilestream_serve_request_seconds_count{{route="{route}",status="{status}"}}'
        assert f"{series} {float(times)}" in exposition, series


def test_a_revoked_key_stops_working_without_a_restart(
    served: tuple[str, str], keys: tuple[Path, dict[str, str]]
) -> None:
    api, _ = served
    path, secrets = keys
    assert request(api + "/users/u1", secrets["all"])[0] == 200
    time.sleep(0.01)  # a new modification time
    write_keys(path, [k for k in read_keys(path) if k.id != "all"])
    assert request(api + "/users/u1", secrets["all"])[0] == 401


def test_a_fuzzed_authorization_header_never_gets_a_500(served: tuple[str, str]) -> None:
    api, _ = served
    rng = random.Random(5)
    alphabet = "Bearer bearer Basic \t:=,;\"'\\/+-_.~%0aé中" + "".join(map(chr, range(33, 127)))
    for _ in range(200):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 700)))
        req = urllib.request.Request(api + "/users/u1", headers={"Authorization": header})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except ValueError:  # a header urllib itself refuses to send
            continue
        assert status in (400, 401), header


def test_health_and_metrics_are_on_their_own_port(
    served: tuple[str, str], keys: tuple[Path, dict[str, str]]
) -> None:
    api, ops = served
    for route in ("/metrics", "/healthz", "/readyz"):
        status, body, _ = request(api + route, keys[1]["all"])
        assert (status, body) == (404, {"detail": "no such route"})
    request(api + "/users/u1", keys[1]["all"])
    status, text, _ = request(ops + "/metrics")
    assert status == 200
    assert 'route="/users/{user_id}",status="200"' in text.decode()
    assert request(ops + "/readyz")[0] == 200 and request(ops + "/healthz")[0] == 200


def test_any_user_id_the_contract_accepts_reads_back(
    served: tuple[str, str], keys: tuple[Path, dict[str, str]]
) -> None:
    api, _ = served
    token = keys[1]["all"]
    for user in ODD_IDS:
        quoted = urllib.parse.quote(user, safe="")
        status, body, _ = request(f"{api}/users/{quoted}", token)
        assert (status, body["user_id"]) == (200, user)
        status, body, _ = request(f"{api}/users/{quoted}/export", token)
        assert (status, body["user_id"], "interest" in body) == (200, user, True)
    status, body, _ = request(f"{api}/users/team/alice", token)  # unencoded: not a user
    assert status == 404 and "%2F" in body["detail"]
    status, body, _ = request(f"{api}/users/{'x' * 10_000}", token)
    assert status == 404 and "x" * 20 not in json.dumps(body)  # the id is not echoed


def test_every_error_is_a_json_problem(
    served: tuple[str, str], keys: tuple[Path, dict[str, str]]
) -> None:
    api, _ = served
    token = keys[1]["all"]
    checks = [
        ("/nowhere", "GET", 404),
        ("/users/u1", "POST", 405),
        ("/users/u1?interest=maybe", "GET", 422),
        ("/users/u1/recommendations?k=0", "GET", 422),
        ("/users/nobody", "GET", 404),
        ("/segments/typo/size", "GET", 404),
    ]
    for route, method, code in checks:
        status, body, headers = request(api + route, token, method)
        assert status == code, route
        assert headers["content-type"] == "application/json" and list(body) == ["detail"]
    listed = request(api + "/segments", token)[1]
    assert {"segment": "lapsing", "size": 0} in listed  # defined, no members yet
    assert {"segment": "vip", "size": 1 + len(ODD_IDS)} in listed


def test_serve_refuses_an_open_address_without_keys(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="without API keys"):
        access_keys(Config(serve_http_host="0.0.0.0"))
    assert access_keys(Config(serve_http_host="0.0.0.0", serve_insecure=True)) is None
    assert access_keys(Config(serve_http_host="127.0.0.1")) is None
    path = tmp_path / "keys.json"
    write_keys(path, [])
    assert isinstance(access_keys(Config(serve_http_host="0.0.0.0", serve_keys_file=path)), KeyRing)
