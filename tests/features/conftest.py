"""Shared fixtures of the feature tests: bars built from the real EURUSD ticks in ../shared/data.

pandas is not a dependency: the ticks are read with the csv module and bucketed with numpy.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EURUSD_TICKS = REPO.parent / "shared" / "data" / "eurusd_ticks_2014-05.csv.gz"

#: bar length in milliseconds per timeframe name
TIMEFRAME_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def read_ticks(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts_ms int64, bid, ask) of a tick file, in file order."""
    with gzip.open(path, "rt", newline="") as f:
        rows = csv.reader(f)
        next(rows)  # header: ts_utc,bid,ask,volume
        ts, bid, ask = [], [], []
        for row in rows:
            ts.append(row[0].rstrip("Z"))  # numpy parses naive ISO times; the file is UTC
            bid.append(row[1])
            ask.append(row[2])
    ts_ms = np.array(ts, dtype="datetime64[ms]").astype(np.int64)
    return ts_ms, np.array(bid, dtype=np.float64), np.array(ask, dtype=np.float64)


def bars_from_ticks(ts_ms: np.ndarray, price: np.ndarray, bar_ms: int):
    """(open, high, low, close, bar_open_ms) of ``price`` per bar of ``bar_ms`` (time-sorted
    ticks; bars only where there are ticks, as the bar service emits them)."""
    bucket = ts_ms // bar_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(price)]
    return (
        price[starts],
        np.maximum.reduceat(price, starts),
        np.minimum.reduceat(price, starts),
        price[ends - 1],
        bucket[starts] * bar_ms,
    )


@pytest.fixture(scope="session")
def real_ticks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 532,891 EURUSD ticks of May 2014: (ts_ms, bid, ask)."""
    if not EURUSD_TICKS.exists():
        pytest.fail(f"the real data set is missing: {EURUSD_TICKS}")
    return read_ticks(EURUSD_TICKS)


@pytest.fixture(scope="session")
def real_bars(real_ticks) -> dict[str, tuple[np.ndarray, ...]]:
    """EURUSD mid-price bars per timeframe ("1m", "5m", "15m", "1h"):
    (open, high, low, close, bar_open_ms) numpy arrays."""
    ts_ms, bid, ask = real_ticks
    mid = (bid + ask) / 2
    return {name: bars_from_ticks(ts_ms, mid, bar_ms) for name, bar_ms in TIMEFRAME_MS.items()}
