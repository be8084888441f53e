"""API keys: who may read what from ``serve``.

Profiles hold search keywords, spend, segments and behaviour, so the API lets no one in
without a key. A key file (JSON, e.g. a mounted Kubernetes Secret) lists the keys, each with
an id, the SHA-256 of its secret (the secret itself is never stored), its scopes, an optional
expiry and a ``revoked`` flag::

    {"keys": [{"id": "crm", "sha256": "9f86...", "scopes": ["profiles:read"],
               "expires": "2027-06-30T00:00:00Z"}]}

``profilestream api-key --id crm --scope profiles:read --keys-file keys.json`` adds one and
prints its secret once. Clients send ``Authorization: Bearer <secret>``. The file is read
again when it changes, so revoking a key needs no restart. A request without a valid key is
401, one whose key lacks the route's scope 403; both say nothing about any profile.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)


class Scope(StrEnum):
    """What a key may read."""

    PROFILES = "profiles:read"  # GET /users/{id}
    SEGMENTS = "segments:read"  # GET /segments, /segments/{name}/size
    RECOMMENDATIONS = "recommendations:read"  # GET /users/{id}/recommendations
    PRIVACY = "privacy:admin"  # GET /users/{id}/export


class ApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One key as the key file holds it."""

    id: str
    sha256: str  # hex digest of the secret
    scopes: frozenset[Scope]
    expires: datetime | None = None
    revoked: bool = False


class KeyFile(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[ApiKey] = []


class Verdict(StrEnum):
    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"  # 401: no key, or not a valid one now
    FORBIDDEN = "forbidden"  # 403: a valid key without the scope


def digest(secret: str) -> str:
    """The SHA-256 (hex) of a key's secret: what the key file stores."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(
    key_id: str, scopes: frozenset[Scope], expires: datetime | None = None
) -> tuple[str, ApiKey]:
    """A fresh secret (256 random bits) and the key file's entry for it."""
    secret = "psk_" + secrets.token_urlsafe(32)
    return secret, ApiKey(key_id, digest(secret), scopes, expires)


def read_keys(path: Path) -> list[ApiKey]:
    """The keys of a key file; a ``ValueError`` naming the problem if it is malformed."""
    try:
        keys = msgspec.json.decode(path.read_bytes(), type=KeyFile).keys
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: key ids must be unique")
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Write a key file (owner-only permissions: it names who may read profiles)."""
    data = msgspec.json.format(msgspec.json.encode(KeyFile(keys)), indent=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data + b"\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


class KeyRing:
    """The key file, read again whenever it changes (looked at every ``poll_s`` at most).

    A file that becomes unreadable or malformed keeps the keys read before, and says so in
    the log: a bad edit must not lock every client out, nor let everyone in.
    """

    def __init__(
        self, path: Path, poll_s: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.poll_s = poll_s
        self.clock = clock
        self._lock = threading.Lock()
        self._mtime = self.path.stat().st_mtime_ns
        self._keys = read_keys(path)
        self._next_look = clock() + poll_s

    def verdict(self, authorization: str | None, scope: Scope) -> tuple[Verdict, str | None]:
        """Whether a request with this ``Authorization`` header may use ``scope``; the key's
        id when it is a valid key."""
        self._refresh()
        token = _bearer(authorization)
        if token is None:
            return Verdict.UNAUTHENTICATED, None
        presented = digest(token).encode()
        found = None
        for key in self._keys:  # every key, compared in constant time
            if hmac.compare_digest(presented, key.sha256.encode()):
                found = key
        if found is None or found.revoked:
            return Verdict.UNAUTHENTICATED, None
        if found.expires is not None and found.expires.timestamp() <= self.clock():
            return Verdict.UNAUTHENTICATED, None
        if scope not in found.scopes:
            return Verdict.FORBIDDEN, found.id
        return Verdict.OK, found.id

    def _refresh(self) -> None:
        now = self.clock()
        if now < self._next_look:
            return
        with self._lock:
            if now < self._next_look:
                return
            self._next_look = now + self.poll_s
            try:
                mtime = self.path.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._keys, self._mtime = read_keys(self.path), mtime
                    log.info("API keys reloaded from %s: %d keys", self.path, len(self._keys))
            except (OSError, ValueError) as exc:
                log.error("API keys: keeping the previous keys: %s", exc)


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token


def as_utc(text: str) -> datetime:
    """An expiry given as an RFC 3339 time or a date (midnight UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
