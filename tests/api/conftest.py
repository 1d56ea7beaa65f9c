"""Fixtures of the gateway tests: an empty SQLite bus and read store per test, and a module's
worth of real trading (four hours of the sample under the EMA cross) with its read side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from gateway_kit import WINDOW, api_settings, gateway, sqlite_bus

from tradepipe.bus import Bus
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.read.analytics import open_analytics_store, rebuild_analytics
from tradepipe.read.projections import ReadStore, open_read_store, rebuild
from tradepipe.sources import sample_paths


@pytest.fixture
def bus(tmp_path) -> Iterator[Bus]:
    bus = sqlite_bus(tmp_path)
    yield bus
    bus.close()


@pytest.fixture(scope="module")
def traded(tmp_path_factory):
    """A bus holding four hours of EMA-cross trading (with its audit log), and the read side
    built from it: (settings, bus, read store, analytics store)."""
    tmp = tmp_path_factory.mktemp("traded")
    settings = api_settings(tmp)
    bus = sqlite_bus(tmp)
    run_pipeline(RunRequest(paths=sample_paths(), settings=settings, strategy="ema-cross", start=WINDOW[0],
                            end=WINDOW[1], audit_path=Path(settings.audit.path)), bus)
    store = open_read_store(settings.read.store)
    analytics = open_analytics_store(settings.read.analytics)
    rebuild(bus, store)
    rebuild_analytics(bus, analytics)
    yield settings, bus, store, analytics
    analytics.close()
    store.close()
    bus.close()


@pytest.fixture
def store(tmp_path) -> Iterator[ReadStore]:
    store = open_read_store(f"sqlite:///{tmp_path / 'read.db'}")
    yield store
    store.close()


@pytest.fixture(scope="module")
def reader(traded) -> Iterator[TestClient]:
    settings, bus, store, analytics = traded
    with gateway(settings, bus, store, analytics) as client:
        yield client
