"""Shared fixtures: the real developer data set (../shared/data beside the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradepipe.runtime.clock import EventClock
from tradepipe.runtime.service import Context

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"
EURUSD_TICKS = DATA_DIR / "eurusd_ticks_2014-05.csv.gz"
EURUSD_M1 = DATA_DIR / "eurusd_m1_2014-05.csv.gz"
EURUSD_H1 = DATA_DIR / "eurusd_h1_2007-2014.csv.gz"


@pytest.fixture(scope="session", autouse=True)
def _real_data_present() -> None:
    if not EURUSD_TICKS.exists():
        pytest.fail(f"the real data set is missing: {DATA_DIR}")


def bridge_context() -> Context:
    return Context("data-bridge", EventClock())
