"""A service runner rides out its broker's death: Tansu with S3 storage (local SeaweedFS) is
SIGKILLed while the bar builder is mid-stream and restarted after a few seconds. The runner
retries its failed flushes and commits with backoff, its bus breaker opens and closes (and says
so on system-events once the broker is back), and every bar of the in-process run is on the bus."""

from __future__ import annotations

import threading
import time

import pytest
from infra import SeaweedS3, Tansu, wait_until

from tradepipe.bus import open_bus
from tradepipe.events.types import MARKET_DATA, SYSTEM, BarClosed, CircuitBreakerStateChanged
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import RunnerConfig, ServiceRunner, ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore, SQLiteCheckpointStore
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.synthetic import synthetic_ticks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class SlowBarBuilder(BarBuilder):
    """The bar builder at 1 ms an event, so the broker surely dies while it has work left."""

    def handle(self, event, ctx):
        time.sleep(0.001)
        return super().handle(event, ctx)


def market_data(per_symbol: int) -> list:
    bridge, ctx, events = DataBridge(), Context("data-bridge"), []
    streams = [synthetic_ticks(s, per_symbol, seed=i) for i, s in enumerate(("EURUSD", "NZDUSD"))]
    for row in zip(*streams):
        for tick in row:
            events += bridge.handle_tick(tick, ctx)
    return events


def test_a_runner_rides_out_a_broker_kill_and_loses_nothing(tmp_path):
    ticks = market_data(6000)
    expected: list = []
    InProcessPipeline([BarBuilder()], on_event=lambda e: expected.append(e) if type(e) is BarClosed else None).feed_all(ticks)
    s3 = SeaweedS3(tmp_path / "s3").start()
    broker = Tansu("s3://tansu/", env=s3.tansu_env()).start()
    url = f"{broker.url}?session_timeout_ms=2000&heartbeat_interval_ms=500&fetch_wait_max_ms=5&idempotence=false&linger_ms=20"
    stop = threading.Event()
    try:
        bus = open_bus(url)
        ensure_topics(bus, partitions=2)
        EventStore(bus).append(ticks)
        runner = ServiceRunner(SlowBarBuilder(), bus, checkpoints=SQLiteCheckpointStore(tmp_path / "state.db"),
                               config=RunnerConfig(batch_size=100, flush_timeout_s=1.0, bus_retry_max_s=0.5))
        worker = threading.Thread(target=runner.run, kwargs={"stop": stop})
        worker.start()
        wait_until(lambda: runner.stats.handled >= 2000, 120, "the runner to get going")
        broker.kill()
        wait_until(lambda: runner.bus_breaker.state == "OPEN", 60, "the bus breaker to open")
        broker.start()
        wait_until(lambda: runner.stats.handled >= len(ticks) + len(expected) and runner.bus_breaker.state == "CLOSED",
                   300, "the runner to finish after the restart")
        stop.set()
        worker.join(60)
        assert runner.stats.bus_failures >= 3
        store = EventStore(bus)
        bars = {s.event.event_id for s in store.replay(MARKET_DATA) if type(s.event) is BarClosed}
        assert bars == {e.event_id for e in expected}  # nothing lost (copies are dropped by id)
        transitions = [(s.event.from_state, s.event.to_state) for s in store.replay(SYSTEM)
                       if type(s.event) is CircuitBreakerStateChanged]
        assert ("CLOSED", "OPEN") in transitions and transitions[-1][1] == "CLOSED"
        runner.close()
        bus.close()
    finally:
        stop.set()
        broker.stop()
        s3.stop()
