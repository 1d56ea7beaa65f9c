"""Fixtures of the read-side tests: read stores on SQLite and PostgreSQL, and a bus file holding
a real run of the pipeline (the EMA cross strategy on a morning of the shipped sample)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.read.projections import ReadStore, open_read_store
from tradepipe.sources import sample_paths

UTC = timezone.utc
#: 8 hours of the sample: ~17k ticks, ~70 fills, a position still open at the end
WINDOW = (datetime(2014, 5, 5, 0, 0, tzinfo=UTC), datetime(2014, 5, 5, 8, 0, tzinfo=UTC))


@pytest.fixture(scope="session")
def ema_cross_run() -> RunRequest:
    """The EMA cross strategy (no models: fast, and it trades) on :data:`WINDOW` of the sample."""
    return RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross", start=WINDOW[0], end=WINDOW[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh read store URL of each backend (the contract suite runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/read.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store() -> Iterator[Callable[..., ReadStore]]:
    """``open_store(url, **options)``: :func:`open_read_store`, closed after the test."""
    stores: list[ReadStore] = []

    def opener(url: str, **options) -> ReadStore:
        stores.append(open_read_store(url, **options))
        return stores[-1]

    yield opener
    for store in stores:
        store.close()


@pytest.fixture(scope="module")
def recorded_run(ema_cross_run, tmp_path_factory) -> tuple[Path, dict]:
    """A SQLite bus file holding :func:`ema_cross_run`, and the run's summary."""
    path = tmp_path_factory.mktemp("recorded") / "bus.db"
    with open_bus(f"sqlite:///{path}") as bus:
        summary = run_pipeline(ema_cross_run, bus)
    return path, summary


@pytest.fixture
def bus_url(recorded_run, tmp_path) -> str:
    """A copy of the recorded run's bus file for this test alone (projectors publish to it)."""
    copy = tmp_path / "bus.db"
    shutil.copy(recorded_run[0], copy)
    return f"sqlite:///{copy}"
