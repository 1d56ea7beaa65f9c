"""Session-wide brokers: one Tansu (memory storage) for every Kafka test; Redis is the
machine's (127.0.0.1:6379), each test with its own key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra import REDIS_HOST, REDIS_PORT, Tansu

REDIS_TEST_DB = 9


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    broker = Tansu().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_url(tansu: Tansu) -> str:
    """The shared broker, with a short group session so joins and rebalances take ~1 s on
    Tansu (it waits session.timeout.ms / 2 before every assignment)."""
    return f"{tansu.url}?session_timeout_ms=2000&heartbeat_interval_ms=500"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh key prefix on the machine's Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"tp-test-{uuid.uuid4().hex[:10]}"
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}?prefix={prefix}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    client.close()
