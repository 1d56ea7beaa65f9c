"""`tradepipe service NAME` as a process: /health and /metrics, a clean stop on SIGTERM, and
two instances of one service in one group splitting the partitions, with nothing lost when
one of them leaves."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from infra import free_port, wait_until

from tradepipe.bus import open_bus
from tradepipe.events.types import MARKET_DATA, BarClosed
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.synthetic import synthetic_ticks

pytestmark = pytest.mark.slow

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "NZDUSD", "USDCAD")


def ticks(count: int, skip: int = 0) -> list:
    """Market-data events of ``count`` synthetic ticks per symbol (one tick a second)."""
    bridge, ctx, events = DataBridge(), Context("data-bridge"), []
    streams = [list(synthetic_ticks(s, skip + count, seed=i, start="2024-01-01T00:00:00Z"))[skip:] for i, s in enumerate(SYMBOLS)]
    for row in zip(*streams):
        for tick in row:
            events += bridge.handle_tick(tick, ctx)
    return events


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening (yet)
        return 0, ""


def start(bus_url: str, instance: str, port: int, state: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tradepipe", "service", "bar-builder", "--bus", bus_url,
                             "--instance", instance, "--port", str(port), "--state", state],
                            stdout=log, stderr=subprocess.STDOUT)


def counter(port: int, name: str) -> float:
    status, text = get(port, "/metrics")
    assert status == 200
    return float(re.search(rf'^tradepipe_{name}_total\{{[^}}]*\}} (\S+)$', text, re.M).group(1))


def handled(port: int) -> float:
    """Ticks handled: the bar builder also reads back the bars it publishes on the same topic."""
    return counter(port, "handled") - counter(port, "emitted")


def test_two_instances_split_the_partitions_and_a_leave_loses_nothing(redis_url, tmp_path):
    url = redis_url + "&session_timeout_ms=2000"
    with open_bus(url) as bus:
        ensure_topics(bus, partitions=4)
    ports = [free_port(), free_port()]
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with open(tmp_path / "services.log", "ab") as log:
        first = start(url, "bar-builder-0", ports[0], state, log)
        second = start(url, "bar-builder-1", ports[1], state, log)
        try:
            for port in ports:
                wait_until(lambda: get(port, "/health")[0] == 200, what="health")
            status, body = get(ports[0], "/health")
            assert '"service": "bar-builder"' in body and '"instance": "bar-builder-0"' in body and '"state": "running"' in body
            before = ticks(600)
            with open_bus(url) as bus:
                EventStore(bus).append(before)
            wait_until(lambda: handled(ports[0]) + handled(ports[1]) >= len(before), what="both instances")
            shares = [handled(port) for port in ports]
            assert all(share > 0 for share in shares) and sum(shares) == len(before)  # split, nothing twice
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0  # checkpointed and left the group
            after = ticks(600, skip=600)
            with open_bus(url) as bus:
                EventStore(bus).append(after)
            # the survivor takes over the leaver's partitions at its commit: every later tick is handled
            wait_until(lambda: handled(ports[1]) >= shares[1] + len(after), what="the survivor")
        finally:
            for process in (first, second):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(30)
    assert second.returncode == 0
    with open_bus(url) as bus:
        bars = [s.event for s in EventStore(bus).replay(MARKET_DATA) if type(s.event) is BarClosed]
    one_minute = {(b.symbol, b.bar_time) for b in bars if b.timeframe == "1m"}
    assert {symbol for symbol, _ in one_minute} == set(SYMBOLS)
    assert len(one_minute) >= len(SYMBOLS) * 19  # 20 minutes of ticks: every closed minute of every symbol
