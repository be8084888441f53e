"""A real ``redis-server`` (Debian's package) for the tests of the Redis profile store.

When ``redis-server`` is not on PATH it is installed with ``apt-get install -y redis-server``
(the test command runs as root on Debian). Each test session starts one server on a free
loopback port, without persistence, in a temporary folder, and stops it at the end. With
``CI=true`` a server that cannot start fails the tests that need it; elsewhere they are
skipped, loudly, as the Kafka tests are.

Test modules take the fixture by importing it
(``from tests.support.redis_server import redis_url``); the server behind it is shared by
every module of the session.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka_broker import free_port
from tests.support.server_process import ServerProcess, ensure_debian_package, unavailable

PACKAGE = "redis-server"


def ensure_redis_server() -> str:
    """The path of ``redis-server``, installing Debian's package first if it is missing."""
    return ensure_debian_package(PACKAGE, "redis-server")[0]


class RedisServer(ServerProcess):
    """One ``redis-server`` on loopback, in its own folder, with persistence off."""

    stop_timeout_s = 10.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.log"
        super().__init__()

    def start(self, timeout_s: float = 20.0) -> None:
        binary = ensure_redis_server()
        command = [
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.log_path), "--protected-mode", "yes",
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited: {err} {self.log_tail()}")
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s}s: {self.log_tail()}")


_shared: RedisServer | None = None
_failure: str | None = None


def _session_server(config: pytest.Config) -> RedisServer:
    """Start the session's server once, whichever module asks first; stop it at the end."""
    global _shared, _failure
    if _shared is None and _failure is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="redis-")))
        try:
            server.start()
        except Exception as exc:
            _failure = str(exc)
        else:
            _shared = server

            def stop() -> None:
                global _shared
                server.stop()
                shutil.rmtree(server.workdir, ignore_errors=True)
                _shared = None

            config.add_cleanup(stop)
    if _shared is None:
        unavailable("redis-server", str(_failure), "these tests need Debian's package")
    return _shared


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of the session's real redis-server (database 0; tests use their own prefix)."""
    yield _session_server(request.config).url
