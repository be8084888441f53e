"""Shared fixtures: a fake text encoder, the real Kafka broker, and the shared data sets.

The broker starts once per session, on first use. With ``CI=true`` a broker that cannot
start fails the Kafka tests; elsewhere (a laptop without a JDK) they are skipped, loudly.

Tests that evaluate on the real data sets in ``../shared/data`` (licences forbid copying
them here) ask for the ``shared_data`` fixture: it fails with a message naming the missing
folder, unless pytest is given ``--skip-shared-data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow.eval.datasets import shared_data_dir
from tests.support.fakes import HashEncoder
from tests.support.kafka_broker import KafkaBroker
from tests.support.server_process import unavailable

SHARED_DATA = shared_data_dir()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-shared-data",
        action="store_true",
        help="skip the evaluations that read the real data sets in ../shared/data",
    )


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """The folder of real data sets; a clear failure (or a skip, if asked) when it is absent."""
    if request.config.getoption("--skip-shared-data"):
        pytest.skip("--skip-shared-data given")
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"this test reads the real data sets in {SHARED_DATA}, which is missing: put the "
            "shared folder beside the project (or set PROFILESTREAM_SHARED_DATA), or run "
            "pytest with --skip-shared-data to skip these tests"
        )
    return SHARED_DATA


@pytest.fixture
def hash_encoder() -> HashEncoder:
    return HashEncoder()


def _running_broker(folder: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(folder)
    try:
        broker.start()
    except Exception as exc:
        unavailable("Kafka broker", str(exc), "these tests need a JDK and Maven")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The session's broker, shared by every test that leaves it running."""
    yield from _running_broker(Path(tmp_path_factory.mktemp("kafka")))


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of the requesting module's own, for tests that stop and start it: that must
    not disturb the tests on the session's broker."""
    yield from _running_broker(Path(tmp_path_factory.mktemp("own-kafka")))
