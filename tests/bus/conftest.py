"""Fixtures for the bus contract suite (R2.3): one bus per test, parametrized by backend.

Every backend runs the same tests: memory, SQLite, Kafka (the session's Tansu broker, see
tests/conftest.py) and Redis Streams (the machine's Redis, a fresh key prefix per test). Tests
use fresh topic and group names, so a shared broker works as well as a private one. Network
backends deliver asynchronously, so tests poll until what they expect arrived (``drain``)
rather than expect one poll to return everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from infra import poll_until

from tradepipe.bus import Bus, Record, open_bus


@pytest.fixture(params=["memory", "sqlite", "kafka", "redis"])
def bus_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://contract-{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bus.db"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def bus(bus_url: str) -> Iterator[Bus]:
    with open_bus(bus_url) as opened:
        yield opened


@pytest.fixture
def new_topic(bus: Bus) -> Callable[..., str]:
    """Create a topic with a fresh name and return the name."""

    def create(partitions: int = 4) -> str:
        name = f"topic-{uuid.uuid4().hex[:8]}"
        bus.create_topic(name, partitions)
        return name

    return create


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def drain() -> Callable[..., list[Record]]:
    return poll_until
