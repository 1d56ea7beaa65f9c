"""Helpers of the gateway tests: real parts only (a SQLite bus, the SQLite read store, chDB
analytics, the real command handler and trading engine on the bus in threads, FastAPI's
TestClient over the ASGI app)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from fastapi.testclient import TestClient

from tradepipe.api.app import create_app
from tradepipe.api.auth import API_KEY_HEADER, hash_key
from tradepipe.bus import Bus, open_bus
from tradepipe.config import Settings
from tradepipe.read.analytics import AnalyticsStore
from tradepipe.read.projections import ReadStore
from tradepipe.runtime.runner import ServiceRunner, ensure_topics
from tradepipe.runtime.service import Service
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail

UTC = timezone.utc
KEY = "correct horse battery staple"
AUTH = {API_KEY_HEADER: KEY}
#: four hours of the shipped sample under the EMA cross: 24 orders, 11 closed positions
WINDOW = (datetime(2014, 5, 5, 0, tzinfo=UTC), datetime(2014, 5, 5, 4, tzinfo=UTC))


def api_settings(tmp: Path, **api) -> Settings:
    return Settings(api={"keys": {"ops": hash_key(KEY)}, **api}, audit={"path": str(tmp / "audit.db")},
                    read={"store": f"sqlite:///{tmp / 'read.db'}", "analytics": f"chdb:///{tmp / 'analytics'}"})


def sqlite_bus(tmp: Path) -> Bus:
    bus = open_bus(f"sqlite:///{tmp / 'bus.db'}", create=True)
    ensure_topics(bus, partitions=2)
    return bus


@contextmanager
def running(service: Service, bus: Bus) -> Iterator[ServiceRunner]:
    """``service`` consuming ``bus`` on a thread until the block ends."""
    runner = ServiceRunner(service, bus)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(30)
        runner.close()


@contextmanager
def gateway(settings: Settings, bus: Bus, read: ReadStore, analytics: AnalyticsStore | None = None) -> Iterator[TestClient]:
    """The app over ``bus`` (a tail on every topic) and the given read side."""
    events = EventStore(bus)
    try:
        with BusTail(bus) as tail, TestClient(create_app(settings, events=events, tail=tail, read=read,
                                                         analytics=analytics)) as client:
            yield client
    finally:
        events.close()


class Collected:
    """Every event a tail sees, for assertions."""

    def __init__(self, tail: BusTail) -> None:
        self.events: list = []
        tail.subscribe(lambda event, record: self.events.append(event))

    def of(self, cls, **fields) -> list:
        return [e for e in self.events if type(e) is cls and all(getattr(e, k) == v for k, v in fields.items())]
