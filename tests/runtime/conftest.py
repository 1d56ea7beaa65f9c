from __future__ import annotations

import pytest

from tradepipe.bus import open_bus
from tradepipe.runtime.runner import ensure_topics

@pytest.fixture(params=["memory", "sqlite"])
def runtime_bus(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/bus.db"
    bus = open_bus(url)
    ensure_topics(bus)
    yield bus
    bus.close()
