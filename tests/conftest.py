"""Session-wide brokers: one Tansu (memory storage) for every Kafka test; Redis is the
machine's (127.0.0.1:6379), each test with its own key prefix; PostgreSQL is the machine's
(127.0.0.1:5432, database ``test``), each test with its own schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra import POSTGRES_URL, REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, Tansu



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


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator:
    """``new(tag="t") -> URL``: a fresh PostgreSQL schema (``?schema=NAME``, created on first
    use by the read store) for fixtures of any scope; every one is dropped at the end."""
    import psycopg

    names: list[str] = []

    def new(tag: str = "t") -> str:
        names.append(f"tp_{tag}_{uuid.uuid4().hex[:10]}")
        return f"{POSTGRES_URL}?schema={names[-1]}"

    yield new
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a store left open fails the drop instead of hanging
        for name in names:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def postgres_url(postgres_schemas) -> str:
    """A URL of the machine's PostgreSQL with a schema of this test's own."""
    return postgres_schemas()
